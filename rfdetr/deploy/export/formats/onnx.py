"""ONNX export of detection, single-stage segmentation and stage-2 (detector + mask head) models.

The exported graph is the single-group export forward (``forward_export`` of
:class:`rfdetr.models.detector.RFDETRModel` or :class:`rfdetr.models.segmenter.Segmenter`), traced at a fixed square
resolution:

* input ``input`` [B, 3, R, R] float32: RGB in [0, 1], bilinearly resized to R x R (no antialias), then normalised
  with the ``mean`` / ``std`` stored in the file's metadata;
* outputs ``dets`` [B, Q, 4] normalised cxcywh boxes, ``labels`` [B, Q, K] class logits and, for models with masks,
  ``masks`` [B, Q, R/4, R/4] mask logits (apply sigmoid and top-k yourself, or use
  :class:`rfdetr.deploy.runtime.runner.OnnxModel`);
* metadata (``metadata_props``): ``class_names`` (JSON list), ``resolution``, ``mean``, ``std`` (JSON lists),
  ``num_select``, ``masks``, ``model_name``, ``producer``.

Only standard ONNX operators (default domain) end up in the graph: the DINOv2 position embeddings, which eager mode
resizes with an antialiased bicubic interpolation when the input grid differs from the stored one, are computed once
at the export resolution and stored as a constant (:func:`rfdetr.deploy.export.graph.bake_position_embeddings`), and
deformable attention is ``F.grid_sample``, i.e. ONNX ``GridSample`` (opset >= 16). :func:`check_onnx_graph` verifies
both properties.

``onnx`` and ``onnxruntime`` are optional dependencies (``pip install onnx onnxruntime``); they are imported only when
exporting or running an exported file.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rfdetr.deploy.export.formats import FORMATS
from rfdetr.deploy.export.graph import INPUT_NAME, OUTPUT_NAMES, ExportForward, prepare_export
from rfdetr.deploy.export.int8 import FLOAT_GROUPS, ONNX_INT8_OPS, quantizable_groups
from rfdetr.deploy.export.metadata import decode_metadata
from rfdetr.util.atomic import atomic_path

__all__ = [
    "INPUT_NAME",
    "Session",
    "export",
    "MIN_OPSET",
    "OUTPUT_NAMES",
    "check_onnx_graph",
    "export_onnx",
    "read_metadata",
]

logger = logging.getLogger(__name__)

# GridSample (deformable attention) exists from opset 16.
MIN_OPSET = 16
# Highest opset the TorchScript exporter of the supported torch versions emits.
MAX_OPSET = 20
FORMAT = FORMATS["onnx"]


def export(
    module: ExportForward,
    path: str | os.PathLike[str],
    example: torch.Tensor,
    metadata: Mapping[str, str] | None = None,
    *,
    half: bool = False,
    opset: int = 17,
    dynamic_batch: bool = False,
    simplify: bool = False,
) -> Path:
    """Write a prepared export module (:func:`rfdetr.deploy.export.graph.prepare_export`) as an ONNX file.

    Args:
        module: the traced forward (eval, CPU, float32, position embeddings baked).
        path: the ``.onnx`` file (written atomically; parent folders are created, an existing file is replaced).
        example: [B, 3, R, R] input the graph is traced with (B is the static batch unless ``dynamic_batch``).
        metadata: string entries for the file's ``metadata_props``.
        half: float16 weights are not offered for ONNX (onnxruntime's CPU kernels are float32); must be False.
        opset: ONNX opset, 16..20 (GridSample needs 16).
        dynamic_batch: make dimension 0 of the input and of every output symbolic (``batch``).
        simplify: run ``onnxsim`` on the graph if it is installed (logged and skipped otherwise).

    Raises:
        ImportError: onnx is not installed.
        ValueError: bad opset, ``half``, or a graph with a non-standard operator or an antialiased resize.
    """
    FORMAT.require()
    import onnx
    FORMAT.check_half(half)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be between {MIN_OPSET} (GridSample) and {MAX_OPSET}, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    output_names = list(module.output_names)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in [INPUT_NAME, *output_names]}

    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            # The tracer warns about every Python-side shape computation; the graph is static by design.
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # Deprecation notices of the TorchScript exporter, chosen on purpose (see below).
            warnings.filterwarnings(
                "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
            )
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
            # The TorchScript exporter (dynamo=False), deprecated but present in torch 2.14: it traces this forward
            # as is (Python-side shape logic such as int(shape) and the cached proposal grid folds into constants of
            # the static graph), needs nothing beyond onnx, emits only default-domain operators, exports nano in
            # ~10 s and matches eager to ~1e-5. The dynamo exporter (default since torch 2.9) needs onnxscript, which
            # is not a dependency of this project (nor on its package index), so it was not an option here.
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=output_names,
                opset_version=opset,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                export_params=True,
                keep_initializers_as_inputs=False,
            )
        proto = onnx.load(str(tmp))
        if simplify:
            proto = _simplify(proto)
        problems = check_onnx_graph(proto)
        if problems:
            raise ValueError(f"the exported graph is not portable: {'; '.join(problems)}")
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    batch, _, height, width = example.shape
    logger.info("exported %s (%s, opset %d, input [%s, 3, %d, %d])", path, ", ".join(output_names), opset,
                "batch" if dynamic_batch else batch, height, width)
    return path


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    resolution: int,
    *,
    batch_size: int = 1,
    dynamic_batch: bool = False,
    opset: int = 17,
    with_masks: bool = True,
    metadata: Mapping[str, str] | None = None,
    simplify: bool = False,
) -> Path:
    """Export ``model``'s single-group inference graph to an ONNX file (:func:`prepare_export` + :func:`export`).

    Args:
        model: an :class:`~rfdetr.models.detector.RFDETRModel` (detection or single-stage segmentation) or a
            stage-2 :class:`~rfdetr.models.segmenter.Segmenter`; it is deep-copied, never modified.
        path: the ``.onnx`` file to write.
        resolution: square input side R, a multiple of the model's patch size times its windows.
        batch_size: batch of the traced input (the static batch size unless ``dynamic_batch``).
        dynamic_batch: make dimension 0 of the input and of every output symbolic (``batch``).
        opset: ONNX opset, 16..20.
        with_masks: export the ``masks`` output when the model has one.
        metadata: string entries added to the file's ``metadata_props`` (class names, preprocessing ...).
        simplify: run ``onnxsim`` on the graph if it is installed.

    Raises:
        ImportError: onnx is not installed.
        ValueError: bad opset, batch size or resolution; or a graph that is not portable.
    """
    FORMAT.require()
    module, example = prepare_export(model, resolution, batch_size, with_masks)
    return export(module, path, example, metadata, opset=opset, dynamic_batch=dynamic_batch, simplify=simplify)


def _simplify(proto: Any) -> Any:
    """``onnxsim.simplify`` when installed; otherwise the graph as exported (already constant-folded)."""
    try:
        import onnxsim
    except ImportError:
        logger.info(
            "simplify=True: onnxsim is not installed (pip install onnxsim), keeping the exported graph, "
            "which the exporter already constant-folded"
        )
        return proto
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        logger.warning("onnxsim could not validate the simplified graph; keeping the exported one")
        return proto
    return simplified


def _graph_nodes(graph: Any) -> list[Any]:
    """Every node of ``graph``, including those of subgraphs (If / Loop bodies)."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.HasField("g"):
                nodes += _graph_nodes(attr.g)
            for sub in attr.graphs:
                nodes += _graph_nodes(sub)
    return nodes


def check_onnx_graph(proto: Any) -> list[str]:
    """Portability problems of an ONNX model: operators outside the default domain, local functions, and Resize
    nodes with ``antialias`` set.

    Args:
        proto: an ``onnx.ModelProto``.

    Returns:
        One message per problem (empty when the graph uses only standard ONNX operators without antialias).
    """
    problems = []
    nodes = _graph_nodes(proto.graph)
    custom = sorted({f"{n.domain}::{n.op_type}" for n in nodes if n.domain not in ("", "ai.onnx")})
    if custom:
        problems.append(f"operators outside the default ONNX domain: {', '.join(custom)}")
    if len(proto.functions):
        problems.append(f"local functions: {', '.join(f.name for f in proto.functions)}")
    for node in nodes:
        if node.op_type == "Resize":
            for attr in node.attribute:
                if attr.name == "antialias" and attr.i != 0:
                    problems.append(f"Resize node {node.name!r} has antialias={attr.i}")
    return problems


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of an exported file, JSON values decoded (``class_names``, ``mean``, ``std``, ``resolution`` ...).

    Raises:
        ImportError: onnx is not installed.
        FileNotFoundError: ``path`` does not exist.
    """
    FORMAT.require()
    import onnx
    if not Path(path).is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    proto = onnx.load(str(path), load_external_data=False)
    return decode_metadata({p.key: p.value for p in proto.metadata_props})


class Session:
    """An ``.onnx`` file in an onnxruntime session (the runner's interface, see :mod:`rfdetr.deploy.export.formats`).

    Args:
        path: the file.
        threads: intra-op threads (default: onnxruntime's choice).
        providers: execution providers (default: CPU).

    Raises:
        ImportError: onnxruntime is not installed.
        ValueError: the file cannot be read as ONNX, or is not an RF-DETR export.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        FORMAT.require(for_running=True)
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped errors for a bad file
            raise ValueError(f"{os.fspath(path)}: onnxruntime cannot load it as an ONNX model: "
                             f"{str(err).splitlines()[0][:300]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(inputs[0].shape) != 4:
            found = [(i.name, i.shape) for i in inputs]
            raise ValueError(f"{os.fspath(path)} is not an RF-DETR export: expected one input {INPUT_NAME!r} "
                             f"[B, 3, R, R], found {found}")
        batch = inputs[0].shape[0]
        self.input_shape: tuple[int | None, int, int, int] = (
            batch if isinstance(batch, int) else None, *(int(d) for d in inputs[0].shape[1:]))  # type: ignore[assignment]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """[B, 3, R, R] float32 -> boxes [B, Q, 4], logits [B, Q, K][, masks [B, Q, R/4, R/4]]."""
        feed = {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.float32)}
        return list(self.session.run(self.output_names, feed))


def quantize(
    float_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    calibration: Sequence[np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    batch: int = 1,
    exclude: Sequence[str] | None = None,
) -> Path:
    """Static full-integer INT8 (QDQ) of a float32 ONNX file, calibrated on preprocessed images.

    Weights are int8 per output channel, activations uint8 per tensor (onnxruntime's fast u8s8 kernels on x86);
    scales come from the min / max seen on ``calibration``.

    Args:
        float_path: the float32 file written by :func:`export`.
        path: the INT8 file to write (atomically).
        calibration: network inputs [1, 3, R, R] float32 (:func:`rfdetr.deploy.export.calibration.calibration_arrays`).
        metadata: entries for ``metadata_props`` (written again: the quantizer rebuilds the model).
        batch: the file's static batch (inputs are repeated to fill it).
        exclude: node names kept in float (mixed precision); default: the nodes of
            :data:`~rfdetr.deploy.export.int8.FLOAT_GROUPS`.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    FORMAT.require(int8=True)
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {INPUT_NAME: np.repeat(item, batch, axis=0)}

    if exclude is None:
        groups = quantizable_groups(float_path)
        exclude = [name for group in FLOAT_GROUPS for name in groups.get(group, [])]
    path = Path(path)
    with atomic_path(path) as tmp:
        quantize_static(str(float_path), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(ONNX_INT8_OPS), nodes_to_exclude=list(exclude),
                        calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.save(proto, str(tmp))
    logger.info("quantized %s to INT8 on %d calibration images (%s; %d nodes kept in float)", path, len(calibration),
                ", ".join(ONNX_INT8_OPS), len(exclude))
    return path
