"""Export formats, as data: each names its module, its file suffix, the packages it needs and what it offers.

A format's module is imported only when that format is used, so ``import rfdetr`` never imports a converter, and
what a format offers (float16 weights, INT8 and how, integer input and outputs) is read from the registry, never by
importing its module. Every format module has the same two parts:

* ``export(module, path, example, metadata, *, half=False, **options) -> Path``: write the traced
  :class:`~rfdetr.deploy.export.graph.ExportForward` ``module`` (eval, CPU, float32, position embeddings baked) for
  the ``example`` input [B, 3, R, R] to ``path``, atomically (no partial file is ever left), with ``metadata``
  (string keys and values: class names, resolution, mean, std ...) in the file or in a JSON beside it;
* ``Session(path, threads=None)``: the file in its own runtime, with ``input_shape`` ([B or None, 3, R, R]),
  ``output_names``, ``metadata`` (the raw strings) and ``run(pixels) -> list[np.ndarray]`` (boxes, logits[, masks]).

A format with full-integer INT8 declares it (:class:`Int8Export`); its entry point is one of:

* ``quantize(float_path, path, calibration, metadata, *, batch, exclude)`` (``source="file"``): quantize the float32
  file ``export`` wrote (onnx, openvino);
* ``quantize_module(module, path, example, calibration, metadata, *, batch, exclude, io)`` (``source="graph"``):
  quantize the PyTorch module itself (tflite, PT2E), with ``io`` one of :data:`Int8Export.io`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

from rfdetr.deploy.export.int8 import DEFAULT_INT8_IO, INT8_IO
from rfdetr.util.optional import MissingPackageError, OptionalFeature

__all__ = [
    "COMPUTE", "DEFAULT_INT8_IO", "EXPORT_FORMATS", "FORMATS", "INT8_IO", "ExportFormat", "Int8Export",
    "MissingPackageError", "format_for_file", "get_format", "half_formats", "int8_formats", "integer_io_formats",
    "load_format",
]


# Precision of a file's float computation, for formats whose runtime takes it from the file (``ExportFormat.bf16``):
# ``auto`` is bfloat16 for INT8 files exported on a CPU with native bf16 whose report check agrees, float32 otherwise.
COMPUTE: tuple[str, ...] = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class Int8Export:
    """How a format writes full-integer INT8 files.

    Attributes:
        source: ``file``: quantize the float32 file the format's ``export`` wrote (``quantize``); ``graph``: quantize
            the PyTorch graph itself, with no float file in between (``quantize_module``).
        entry: ``module:function`` of the quantizer (imported only when an INT8 file is made).
        io: the input / output types its files can have (:data:`~rfdetr.deploy.export.int8.INT8_IO`).
        packages: import names the quantizer needs beyond the format's own.
        score_tolerance: the largest score change of a detection the format states for its INT8 files (the export
            report's verdict and README's table; measured on the demo model with margin, tests/tolerances.py).
    """

    source: Literal["file", "graph"]
    entry: str
    io: tuple[str, ...] = (DEFAULT_INT8_IO,)
    packages: tuple[str, ...] = ()
    score_tolerance: float = 0.15

    def load(self) -> Callable[..., Path]:
        """The quantizer function."""
        module, _, name = self.entry.partition(":")
        return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ExportFormat(OptionalFeature):
    """One export format (an :class:`~rfdetr.util.optional.OptionalFeature` whose ``packages`` are what exporting
    needs, the runtime's first).

    Attributes:
        module: the module with its ``export`` and ``Session``.
        suffix: suffix of the written file (the one the runner recognises).
        runtime: import names of what running the file needs.
        half: what ``half=True`` (``--half``) gives in this format, or None where it is not offered.
        no_half: why ``half`` is not offered (for the message), where it is not.
        int8: how the format makes full-integer INT8 files, or None.
        bf16: what ``compute="bfloat16"`` gives in this format (its runtime runs the float parts in bfloat16 on CPUs
            with native bf16), or None where the runtime's precision is not chosen by the file.
    """

    module: str = ""
    suffix: str = ""
    runtime: tuple[str, ...] = ()
    half: str | None = None
    no_half: str = ""
    int8: Int8Export | None = None
    bf16: str | None = None

    def check_compute(self, compute: str) -> None:
        """Raise ValueError for an unknown ``compute``, or bfloat16 asked of a format whose file cannot set it."""
        if compute not in COMPUTE:
            raise ValueError(f"compute must be one of {', '.join(COMPUTE)}, got {compute!r}")
        if compute == "bfloat16" and self.bf16 is None:
            offered = [f.name for f in FORMATS.values() if f.bf16 is not None]
            raise ValueError(f"--compute bfloat16 is not offered for {self.name} (its runtime's precision is not set "
                             f"by the file); formats that offer it: {', '.join(offered)}")

    def check_half(self, half: bool) -> None:
        """Raise ValueError when ``half`` is asked of a format that does not offer float16 weights."""
        if half and self.half is None:
            raise ValueError(f"--half is not offered for {self.name}: {self.no_half}; formats with float16 weights: "
                             f"{', '.join(half_formats())}")

    def require(self, for_running: bool = False, *, int8: bool = False) -> None:  # type: ignore[override]
        """Raise :class:`MissingPackageError` (with the pip command) if a package needed for exporting (with
        ``int8``: for an INT8 file) or for running a file is missing."""
        if for_running:
            super().require(self.runtime, f"running {self.name}")
        else:
            extra = self.int8.packages if int8 and self.int8 is not None else ()
            super().require((*self.packages, *extra), f"exporting to {self.name}" + (" INT8" if int8 else ""))


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            name="onnx", module="rfdetr.deploy.export.formats.onnx", suffix=".onnx",
            packages=("onnx", "onnxruntime"), runtime=("onnxruntime",),
            pip=("onnx==1.23.2", "onnxruntime==1.32.0"), extra="onnx", label="ONNX, run with onnxruntime",
            no_half="onnxruntime runs float32 on the CPU; use openvino or tflite for float16 weights",
            int8=Int8Export("file", "rfdetr.deploy.export.formats.onnx:quantize", score_tolerance=0.15),
        ),
        ExportFormat(
            name="tflite", module="rfdetr.deploy.export.formats.tflite", suffix=".tflite",
            packages=("ai_edge_litert", "litert_torch"), runtime=("ai_edge_litert",),
            pip=("litert-torch==0.10.0", "ai-edge-litert==2.3.0", "torchao==0.18.0"), extra="tflite",
            label="TFLite (LiteRT flatbuffer), run with ai-edge-litert",
            half="float16 weights, dequantized at load time; computation stays float32",
            int8=Int8Export("graph", "rfdetr.deploy.export.formats.tflite_int8:quantize_module", io=INT8_IO,
                            packages=("torchao",), score_tolerance=0.05),
        ),
        ExportFormat(
            name="openvino", module="rfdetr.deploy.export.formats.openvino", suffix=".xml",
            packages=("openvino",), runtime=("openvino",), pip=("openvino==2026.4.1", "nncf==3.4.0"),
            extra="openvino", label="OpenVINO IR (.xml + .bin), run with OpenVINO",
            half="float16 weights in the .bin; the CPU plugin computes in float32",
            int8=Int8Export("file", "rfdetr.deploy.export.formats.openvino:quantize", packages=("nncf",),
                            score_tolerance=0.1),
            bf16="the CPU plugin runs the float parts in bfloat16 where the CPU has native bf16 (AMX, AVX512-BF16), "
                 "float32 elsewhere",
        ),
        ExportFormat(
            name="executorch", module="rfdetr.deploy.export.formats.executorch", suffix=".pte",
            packages=("executorch",), runtime=("executorch",), pip=("executorch==1.5.1",), extra="executorch",
            label="ExecuTorch program with the XNNPACK delegate",
            no_half="float16 XNNPACK programs run slower than float32 on x86 CPUs and gave wrong outputs here",
        ),
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


def int8_formats() -> list[str]:
    """The formats that write full-integer INT8 files."""
    return [name for name, fmt in FORMATS.items() if fmt.int8 is not None]


def integer_io_formats() -> list[str]:
    """The formats whose INT8 files can have int8 / uint8 input and outputs (``int8_io``)."""
    return [name for name, fmt in FORMATS.items() if fmt.int8 is not None and set(fmt.int8.io) - {DEFAULT_INT8_IO}]


def half_formats() -> list[str]:
    """The formats that offer float16 weights (``half``)."""
    return [name for name, fmt in FORMATS.items() if fmt.half is not None]
