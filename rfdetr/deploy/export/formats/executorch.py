"""ExecuTorch export (``.pte``, XNNPACK delegate) of detection, single-stage segmentation and stage-2 models.

The program is the traced :class:`~rfdetr.deploy.export.graph.ExportForward`: ``torch.export.export`` at a static shape,
lowered with ``executorch.exir.to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` (the matrix
products, convolutions and elementwise ops run in XNNPACK; what XNNPACK does not take, e.g. ``grid_sample`` of the
deformable attention, runs in ExecuTorch's portable kernels), then serialised by ``to_executorch()``:

* input [B, 3, R, R] float32, preprocessed as ``predict()`` does (see :mod:`rfdetr.deploy.export.formats.onnx`);
* outputs, in this order: boxes [B, Q, 4] normalised cxcywh (``dets``), class logits [B, Q, K] (``labels``) and, with
  masks, mask logits [B, Q, R/4, R/4] (``masks``). A ``.pte`` has no tensor names; the order is the contract;
* metadata (class names, resolution, mean, std, num_select ...) in ``<file>.pte.json`` beside it
  (:func:`rfdetr.deploy.export.metadata.sidecar_path`), since a ``.pte`` has no place for it.

Float32 only: ``half=True`` is refused. Measured here (x86-64 with AVX2 + F16C, no AVX512-FP16) on a
Linear-GELU-Linear-LayerNorm block lowered in float16: GELU and LayerNorm fell back to portable kernels, the program
ran 2.2x slower than float32 and its outputs were wrong (max diff 267 against float32).

``executorch`` is an optional dependency (``pip install executorch``), imported only when exporting or running.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfdetr.deploy.export.formats import FORMATS
from rfdetr.deploy.export.graph import OUTPUT_NAMES, ExportForward
from rfdetr.deploy.export.metadata import read_sidecar, sidecar_path, write_sidecar
from rfdetr.util.atomic import atomic_path

__all__ = ["OUTPUT_NAMES", "Session", "export"]

logger = logging.getLogger(__name__)

FORMAT = FORMATS["executorch"]


def export(
    module: ExportForward,
    path: str | os.PathLike[str],
    example: torch.Tensor,
    metadata: Mapping[str, str] | None = None,
    *,
    half: bool = False,
) -> Path:
    """Write a prepared export module (:func:`rfdetr.deploy.export.graph.prepare_export`) as an ExecuTorch program.

    Args:
        module: the traced forward (eval, CPU, float32, position embeddings baked).
        path: the ``.pte`` file; ``metadata`` goes to ``<path>.json`` beside it. Both are written atomically and the
            program is renamed into place last, so a failed export leaves neither.
        example: [B, 3, R, R] input the program is exported with; its shape is the program's static input shape.
        metadata: string entries for the JSON beside the file.
        half: refused (see the module docstring); must be False.

    Returns:
        The ``.pte`` path.

    Raises:
        ImportError: executorch is not installed.
        ValueError: ``half``, or ``path`` does not end with ``.pte``.

    Lowering is slow: about 2-3 minutes for the tiny test models on a busy 2-core machine, nearly all of it in
    ExecuTorch's Python graph passes over the ~80 XNNPACK partitions (the ops XNNPACK lacks, such as ``grid_sample``,
    split the graph).
    """
    FORMAT.check_half(half)
    path = Path(path)
    if path.suffix != ".pte":
        raise ValueError(f"an ExecuTorch program is a .pte file, got {path}")
    FORMAT.require()
    from executorch.backends.transforms.addmm_mm_to_linear import AddmmToLinearTransform
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path.parent.mkdir(parents=True, exist_ok=True)
    # One eager call first: the two-stage proposal grid is built in Python with a data-dependent branch that
    # torch.export cannot trace, and cached per shape (transformer.proposal_grid); the export then reads the cached
    # grid as a constant, as the other formats' tracers do.
    with torch.no_grad():
        module(example)
    with warnings.catch_warnings():
        # torch.export specialises every Python-side shape computation to the example's shape, which is the point.
        warnings.filterwarnings("ignore", category=UserWarning)
        # With autograd on (prepare_export keeps requires_grad), as the other formats trace: no in-place fast paths.
        program = torch.export.export(module, (example,), strict=False)
        # torch.export decomposes the products into mm / addmm; 54 of nano's are then left to ExecuTorch's portable
        # mm kernel, which is ~2 orders of magnitude slower than XNNPACK. Recombined into aten.linear, XNNPACK takes
        # them: nano @ 384 runs in 505 ms instead of 1250 ms here, outputs unchanged (rfdetr does the same).
        lowered = to_edge_transform_and_lower(program, transform_passes=[AddmmToLinearTransform()],
                                              partitioner=[XnnpackPartitioner()])
        buffer = lowered.to_executorch().buffer
    written_sidecar = False
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer)
            write_sidecar(path, dict(metadata or {}))
            written_sidecar = True
    except BaseException:
        if written_sidecar:  # metadata without its program would only mislead
            sidecar_path(path).unlink(missing_ok=True)
        raise
    batch, _, height, width = example.shape
    logger.info("exported %s (%d outputs, XNNPACK, input [%d, 3, %d, %d], metadata in %s)", path,
                3 if module.with_masks else 2, batch, height, width, sidecar_path(path).name)
    return path


def _check_header(path: str | os.PathLike[str]) -> None:
    """Refuse a file that is not a whole ``.pte`` before the runtime sees it: the ExecuTorch runtime aborts the
    process (no Python exception) on some foreign or truncated files.

    A ``.pte`` is a flatbuffer with the file identifier ``ET..`` at bytes 4-8, followed by ExecuTorch's extended
    header (``eh00``, its length, then little-endian u64 program size, segment base offset and, in headers of 32
    bytes or more, segment data size), which gives the size the file must have.

    Raises:
        ValueError: the file is too short, has no ExecuTorch identifier, or is shorter than its header says.
    """
    name = os.fspath(path)
    with open(path, "rb") as file:
        head = file.read(40)
    size = os.path.getsize(path)
    if len(head) < 12 or head[4:6] != b"ET":
        raise ValueError(f"{name}: the ExecuTorch runtime cannot load it as a program: no ExecuTorch program "
                         "identifier (not a .pte file)")
    if head[8:12] == b"eh00" and len(head) >= 32:
        length = int.from_bytes(head[12:16], "little")
        base = int.from_bytes(head[24:32], "little")
        data = int.from_bytes(head[32:40], "little") if length >= 32 and len(head) >= 40 else 0
        program = int.from_bytes(head[16:24], "little")
        needed = max(program, base + data)
        if size < needed:
            raise ValueError(f"{name}: the ExecuTorch runtime cannot load it as a program: truncated ({size} bytes, "
                             f"its header says {needed})")


# Every live Session: XNNPACK keeps a pointer to the threadpool its program was loaded with, so resetting the pool
# under a loaded program leaves that pointer dangling and the next execute() crashes the process (segfault).
_LIVE: weakref.WeakSet[Session] = weakref.WeakSet()


def _threadpool(threads: int) -> None:
    """Size ExecuTorch's CPU threadpool (XNNPACK's threads) before a program is loaded.

    It is one pool per process. Resizing it is only safe while no program is loaded (see ``_LIVE``), so while other
    Sessions are alive the pool keeps its size and ``threads`` is ignored with a warning.
    """
    from executorch.extension.pybindings import portable_lib

    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    current = portable_lib._threadpool_get_thread_count()
    if current == threads:
        return
    if reset is None:
        logger.warning("this executorch build cannot set the thread count; threads=%d ignored", threads)
    elif len(_LIVE):
        logger.warning("ExecuTorch's threadpool is shared by the process and %d program(s) are loaded on %d threads; "
                       "threads=%d ignored (resizing it under a loaded program crashes the process)", len(_LIVE),
                       current, threads)
    else:
        reset(int(threads))


class Session:
    """A ``.pte`` program in the ExecuTorch runtime (the runner's interface, see :mod:`rfdetr.deploy.export.formats`).

    Args:
        path: the ``.pte`` file (its metadata JSON beside it).
        threads: threads of ExecuTorch's CPU threadpool, which XNNPACK runs on (default: the runtime's, one per
            core). The pool is shared by every program in the process and can only be resized while none is loaded:
            a later Session asking for another count runs on the existing pool, with a warning.

    Raises:
        ImportError: executorch is not installed.
        ValueError: the file cannot be read as an ExecuTorch program, is not an RF-DETR export, or its metadata
            JSON is missing.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        FORMAT.require(for_running=True)
        from executorch.runtime import Runtime
        name = os.fspath(path)
        _check_header(path)
        if threads is not None:  # before loading: the program's XNNPACK delegate binds the pool it is loaded with
            _threadpool(threads)
        try:
            program = Runtime.get().load_program(Path(path))
            method = program.load_method("forward")
        except (RuntimeError, ValueError) as err:  # the runtime raises RuntimeError for a bad or foreign file
            raise ValueError(f"{name}: the ExecuTorch runtime cannot load it as a program: "
                             f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__}"
                             ) from None
        if method is None:
            raise ValueError(f"{name} is not an RF-DETR export: the program has no 'forward' method")
        meta = method.metadata
        sizes = list(meta.input_tensor_meta(0).sizes()) if meta.num_inputs() == 1 else []
        if len(sizes) != 4 or meta.num_outputs() not in (2, 3):
            raise ValueError(f"{name} is not an RF-DETR export: expected one input [B, 3, R, R] and 2 or 3 outputs, "
                             f"found {meta.num_inputs()} input(s) {sizes} and {meta.num_outputs()} output(s)")
        self.metadata: dict[str, str] = read_sidecar(path)
        self.program, self.method = program, method
        self.input_shape: tuple[int | None, int, int, int] = tuple(int(d) for d in sizes)  # type: ignore[assignment]
        self.output_names = list(OUTPUT_NAMES[: meta.num_outputs()])
        _LIVE.add(self)

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """[B, 3, R, R] float32 -> boxes [B, Q, 4], logits [B, Q, K][, masks [B, Q, R/4, R/4]]."""
        feed = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        outputs: Any = self.method.execute([feed])
        # The outputs may alias the program's planned memory, which the next call overwrites: copy.
        return [out.numpy().copy() for out in outputs]
