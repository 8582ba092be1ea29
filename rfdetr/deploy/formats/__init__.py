"""Export formats, as data: each names its module, its file suffix and the packages it needs.

A format's module is imported only when that format is used, so ``import rfdetr`` never imports a converter. Every
format module has the same two parts:

* ``export(module, path, example, metadata, *, half=False, **options) -> Path``: write the traced
  :class:`~rfdetr.deploy.graph.ExportForward` ``module`` (eval, CPU, float32, position embeddings baked) for the
  ``example`` input [B, 3, R, R] to ``path``, atomically (no partial file is ever left), with ``metadata``
  (string keys and values: class names, resolution, mean, std ...) in the file or in a JSON beside it;
* ``Session(path, threads=None)``: the file in its own runtime, with ``input_shape`` ([B or None, 3, R, R]),
  ``output_names``, ``metadata`` (the raw strings) and ``run(pixels) -> list[np.ndarray]`` (boxes, logits[, masks]).

A format with full-integer INT8 has one of:

* ``quantize(float_path, path, calibration, metadata, *, batch, exclude)``: quantize the float32 file ``export``
  wrote (onnx, openvino);
* ``quantize_module(module, path, example, calibration, metadata, *, batch, exclude, io)``: quantize the PyTorch
  module itself (tflite, PT2E), with ``io`` one of :data:`INT8_IO` when the format lists it in ``INTEGER_IO``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = [
    "DEFAULT_INT8_IO", "EXPORT_FORMATS", "FORMATS", "INT8_IO", "ExportFormat",
    "MissingPackageError", "format_for_file", "get_format", "load_format",
]


# Types of an INT8 file's input and outputs: float32 (quantized inside the file), or integers for accelerators that
# take nothing else (NPUs); the runner converts, so predict() is the same for all three.
INT8_IO: tuple[str, ...] = ("float", "int8", "uint8")
DEFAULT_INT8_IO = "float"


class MissingPackageError(ImportError):
    """A format's optional packages are not installed; the message gives the pip command."""


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: the ``format=`` / ``--format`` value.
        module: the module with its ``export`` and ``Session``.
        suffix: suffix of the written file (the one the runner recognises).
        packages: import names of what exporting needs (the runtime's first).
        runtime: import names of what running the file needs.
        pip: pip requirement strings, pinned to the versions verified with this project's torch.
        extra: this project's optional extra (``pip install -e ".[extra]"``).
        label: what the file is and what runs it, for messages and the README.
    """

    name: str
    module: str
    suffix: str
    packages: tuple[str, ...]
    runtime: tuple[str, ...]
    pip: tuple[str, ...]
    extra: str
    label: str

    @property
    def install(self) -> str:
        """The command that installs what the format needs."""
        return f"pip install {' '.join(self.pip)}  (or: pip install -e \".[{self.extra}]\")"

    def missing(self, for_running: bool = False) -> list[str]:
        """Import names of the needed packages that are not installed."""
        names = self.runtime if for_running else self.packages
        return [name for name in names if importlib.util.find_spec(name) is None]

    def require(self, for_running: bool = False) -> None:
        """Raise :class:`MissingPackageError` (with the pip command) if a needed package is missing."""
        missing = self.missing(for_running)
        if missing:
            action = "running" if for_running else "exporting to"
            raise MissingPackageError(f"{action} {self.name} ({self.label}) needs {', '.join(missing)}, which is not "
                                      f"installed: {self.install}")


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("onnx", "rfdetr.deploy.formats.onnx", ".onnx", ("onnx", "onnxruntime"), ("onnxruntime",),
                     ("onnx==1.23.2", "onnxruntime==1.32.0"), "onnx", "ONNX, run with onnxruntime"),
        ExportFormat("tflite", "rfdetr.deploy.formats.tflite", ".tflite", ("ai_edge_litert", "litert_torch"),
                     ("ai_edge_litert",), ("litert-torch==0.10.0", "ai-edge-litert==2.3.0", "torchao==0.18.0"),
                     "tflite", "TFLite (LiteRT flatbuffer), run with ai-edge-litert"),
        ExportFormat("openvino", "rfdetr.deploy.formats.openvino", ".xml", ("openvino",), ("openvino",),
                     ("openvino==2026.4.1", "nncf==3.4.0"), "openvino", "OpenVINO IR (.xml + .bin), run with OpenVINO"),
        ExportFormat("executorch", "rfdetr.deploy.formats.executorch", ".pte", ("executorch",), ("executorch",),
                     ("executorch==1.5.1",), "executorch", "ExecuTorch program with the XNNPACK delegate"),
    )
}
EXPORT_FORMATS: tuple[str, ...] = tuple(FORMATS)


def get_format(name: str) -> ExportFormat:
    """The format called ``name``.

    Raises:
        ValueError: unknown name; the message lists the formats.
    """
    if name not in FORMATS:
        raise ValueError(f"unknown export format {name!r}; supported: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_for_file(path: str | os.PathLike[str]) -> ExportFormat:
    """The format of an exported file, by its suffix.

    Raises:
        ValueError: no format writes files with that suffix.
    """
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS.values():
        if suffix == fmt.suffix:
            return fmt
    known = ", ".join(f"{f.suffix} ({f.name})" for f in FORMATS.values())
    raise ValueError(f"{os.fspath(path)}: not an exported model file (known suffixes: {known})")


def load_format(fmt: ExportFormat) -> ModuleType:
    """Import a format's module (which imports its packages only when exporting or running)."""
    return importlib.import_module(fmt.module)
