"""Export formats, as data: each names the module that writes and runs it and the packages it needs.

A format's module is imported only when that format is used, so ``import rfdetr`` never imports a converter.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EXPORT_FORMATS", "FORMATS", "ExportFormat"]


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: the ``format=`` / ``--format`` value.
        module: the module with its ``export`` function.
        suffix: file suffix of the written file.
        install: pip command that installs what the format needs.
    """

    name: str
    module: str
    suffix: str
    install: str


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("onnx", "rfdetr.deploy.formats.onnx", ".onnx", "pip install onnx onnxruntime"),
    )
}
EXPORT_FORMATS: tuple[str, ...] = tuple(FORMATS)
