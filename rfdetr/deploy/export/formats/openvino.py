"""OpenVINO IR export (``.xml`` graph + ``.bin`` weights) of detection, single-stage segmentation and stage-2 models.

The IR is converted by OpenVINO's PyTorch frontend (what ``openvino.convert_model`` runs) straight from the traced
:class:`~rfdetr.deploy.export.graph.ExportForward`, at a static shape. No ONNX file in between, so exporting needs only
``openvino``; both routes were measured on RFDETRNano at 384 px and give the same outputs (max diff vs PyTorch 0.0
boxes, 3e-6 logits) and latency, but this one exports in 6 s against 9.5 s through ONNX:

* input ``input`` [B, 3, R, R] float32, preprocessed as ``predict()`` does (see
  :mod:`rfdetr.deploy.export.formats.onnx`);
* outputs ``dets`` [B, Q, 4] normalised cxcywh boxes, ``labels`` [B, Q, K] class logits and, with masks, ``masks``
  [B, Q, R/4, R/4] mask logits;
* metadata (class names, resolution, mean, std, num_select ...) as strings in the IR's ``rt_info`` under
  ``rfdetr/<key>`` (:data:`RT_INFO_ROOT`), so that the ``.xml`` describes itself like an ONNX file does.

Weights are stored in float32 by default. ``half=True`` compresses them to float16 in the ``.bin`` (half the size);
the CPU plugin decompresses them and still computes in float32.

The precision of the float computation is the file's, recorded in its metadata as ``compute`` (:data:`COMPUTE_KEY`)
and applied by :class:`Session` as the plugin's ``INFERENCE_PRECISION_HINT``: ``float32`` (the default), or
``bfloat16`` where the CPU has native bf16 (AMX, AVX512-BF16; :func:`native_bf16`), float32 on other CPUs. Without a
hint the plugin picks bf16 on such CPUs by itself, which is what rfdetr's files get. INT8 files exported with
``compute="auto"`` on a bf16 CPU record bfloat16 when their report check agrees (the exporter decides), so what is
left in float there (LayerNorm, softmax, GELU, grid sampling, the proposal heads) runs in bf16 beside the int8
products: on seg-nano at 312 px (Zen 4, AVX512-BF16, 2 threads) 114.6 -> 97.6 ms.

float16 weights move logits by ~3e-3 on the tiny test models, enough to reorder near-tied proposals: on RFDETRNano
(random weights, 384 px) 53 of the 300 top-k (query, class) pairs changed, which is why float32 is the default here
(measured: max diff 0.0 boxes, 3e-6 logits).

``openvino`` is an optional dependency (``pip install openvino``), imported only when exporting or running.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfdetr.deploy.export.formats import FORMATS
from rfdetr.deploy.export.graph import INPUT_NAME, OUTPUT_NAMES, ExportForward
from rfdetr.deploy.export.int8 import FLOAT_GROUPS
from rfdetr.util.atomic import atomic_path

__all__ = [
    "COMPUTE_KEY", "INPUT_NAME", "OUTPUT_NAMES", "RT_INFO_ROOT", "Session", "export", "native_bf16", "quantize",
    "read_metadata", "set_compute",
]

logger = logging.getLogger(__name__)

# rt_info section of our metadata: <rt_info><rfdetr><class_names value="..."/>...</rfdetr></rt_info> in the .xml.
RT_INFO_ROOT = "rfdetr"
FORMAT = FORMATS["openvino"]
# Metadata entry with the file's float precision, "float32" or "bfloat16" (older files have none: float32).
COMPUTE_KEY = "compute"
_HINTS = {"float32": "f32", "bfloat16": "bf16"}


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has native bfloat16 kernels on this CPU (AMX or AVX512-BF16)."""
    FORMAT.require(for_running=True)
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def weights_path(path: str | os.PathLike[str]) -> Path:
    """The ``.bin`` that holds the weights of an ``.xml`` (OpenVINO reads it from beside the graph)."""
    return Path(path).with_suffix(".bin")


def export(
    module: ExportForward,
    path: str | os.PathLike[str],
    example: torch.Tensor,
    metadata: Mapping[str, str] | None = None,
    *,
    half: bool = False,
) -> Path:
    """Write a prepared export module (:func:`rfdetr.deploy.export.graph.prepare_export`) as an OpenVINO IR.

    Args:
        module: the traced forward (eval, CPU, float32, position embeddings baked).
        path: the ``.xml`` file; its weights go to the ``.bin`` beside it. Both are written under temporary names
            and renamed at the end, so a failed export leaves neither (existing files are replaced).
        example: [B, 3, R, R] input the graph is traced with; its shape is the IR's static input shape.
        metadata: string entries stored in the IR's ``rt_info`` (:data:`RT_INFO_ROOT`).
        half: store the weights in float16 (half the size; computation stays float32).

    Returns:
        The ``.xml`` path.

    Raises:
        ImportError: openvino is not installed.
        ValueError: ``path`` does not end with ``.xml``.
    """
    FORMAT.require()
    import openvino as ov

    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is an .xml file (with its .bin beside it), got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    output_names = module.output_names
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-side shape computation; the graph is static by design.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # check_trace=False: the tracer's re-trace sanity check fails on this forward (Python-side shape values fold
        # into constants that differ between its two traces); the traced graph itself matches eager (tests).
        traced = torch.jit.trace(module, example, check_trace=False)
    model = _convert_traced(ov, traced, tuple(example.shape))
    if len(model.inputs) != 1 or len(model.outputs) != len(output_names):
        raise ValueError(f"OpenVINO converted the graph to {len(model.inputs)} input(s) and {len(model.outputs)} "
                         f"output(s); expected 1 and {len(output_names)}")
    # Names from the contract instead of the converter's (the forward's argument name and anonymous outputs).
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(model.outputs, output_names, strict=True):
        output.get_tensor().set_names({name})
    for key, value in (metadata or {}).items():
        model.set_rt_info(str(value), [RT_INFO_ROOT, str(key)])

    _save_atomically(ov, model, path, half)
    batch, _, height, width = example.shape
    logger.info("exported %s (%s, %s weights, input [%d, 3, %d, %d])", path, ", ".join(output_names),
                "float16" if half else "float32", batch, height, width)
    return path


def _save_atomically(ov: Any, model: Any, path: Path, half: bool) -> Path:
    """``ov.save_model`` to temporary names, then renamed: a failure leaves neither the ``.xml`` nor the ``.bin``."""
    # The weights are moved first: a new .xml is never visible without the .bin it was written with.
    with atomic_path(path, companions=(".bin",)) as tmp:
        ov.save_model(model, str(tmp), compress_to_fp16=half)
    return path


def _convert_traced(ov: Any, traced: torch.jit.ScriptModule, shape: tuple[int, ...]) -> Any:
    """A TorchScript module -> ``ov.Model`` with the static input ``shape``, by OpenVINO's PyTorch frontend.

    This is the conversion ``openvino.convert_model`` runs, minus its telemetry: ``convert_model`` reports usage events
    on the way, which cost 10-15 s per call on a machine without internet access (measured here: 14 s vs 2.5 s for the
    tiny test model) and send data on the user's behalf. The graph transformations it applies afterwards are the ones
    ``ov.save_model`` applies when the IR is written, so the saved IR is the same kind of graph.
    """
    from openvino.frontend import FrontEndManager
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    frontend = FrontEndManager().load_by_framework("pytorch")
    decoder = TorchScriptPythonDecoder(traced)  # must outlive convert(): the frontend reads the graph through it
    input_model = frontend.load(decoder)
    # A static shape, unlike rfdetr's IR ([?,?,?,?]), whose other resolutions load and then fail at inference.
    input_model.set_partial_shape(input_model.get_place_by_input_index(0), ov.PartialShape(list(shape)))
    return frontend.convert(input_model)


def _rt_metadata(model: Any) -> dict[str, str]:
    """The ``rfdetr/<key>`` entries of an ``ov.Model``'s rt_info as strings (empty when it has none)."""
    if not model.has_rt_info([RT_INFO_ROOT]):
        return {}
    section = model.get_rt_info([RT_INFO_ROOT])
    return {str(key): value.astype(str) for key, value in section.astype(dict).items()}


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of an IR, JSON values decoded (``class_names``, ``mean``, ``std``, ``resolution`` ...).

    Raises:
        ImportError: openvino is not installed.
        ValueError: the file cannot be read as an OpenVINO IR.
    """
    from rfdetr.deploy.export.metadata import decode_metadata

    FORMAT.require(for_running=True)
    import openvino as ov

    return decode_metadata(_rt_metadata(_read_model(ov.Core(), path)))


def _read_model(core: Any, path: str | os.PathLike[str]) -> Any:
    try:
        return core.read_model(os.fspath(path))
    except (RuntimeError, ValueError) as err:  # OpenVINO raises RuntimeError for a bad or foreign file
        raise ValueError(f"{os.fspath(path)}: OpenVINO cannot read it as an IR (.xml with its .bin beside it): "
                         f"{str(err).strip().splitlines()[0][:300]}") from None


class Session:
    """An OpenVINO IR compiled for the CPU (the runner's interface, see :mod:`rfdetr.deploy.export.formats`).

    Args:
        path: the ``.xml`` file (its ``.bin`` beside it).
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice, all cores).
        compute: ``float32`` or ``bfloat16`` instead of the file's own ``compute`` entry. bfloat16 runs as float32
            on a CPU without native bf16.

    Attributes:
        compute: the precision the float parts run at here (``float32`` or ``bfloat16``).

    Raises:
        ImportError: openvino is not installed.
        ValueError: the file cannot be read as an IR, or is not an RF-DETR export.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, compute: str | None = None) -> None:
        FORMAT.require(for_running=True)
        import openvino as ov
        core = ov.Core()
        model = _read_model(core, path)
        inputs = model.inputs
        shape = inputs[0].get_partial_shape() if len(inputs) == 1 else None
        if shape is None or INPUT_NAME not in inputs[0].get_names() or shape.rank.get_length() != 4 \
                or shape.is_dynamic:
            found = [(sorted(i.get_names()), str(i.get_partial_shape())) for i in inputs]
            raise ValueError(f"{os.fspath(path)} is not an RF-DETR export: expected one static input {INPUT_NAME!r} "
                             f"[B, 3, R, R], found {found}")
        self.input_shape: tuple[int | None, int, int, int] = tuple(int(d) for d in shape.to_shape())  # type: ignore
        self.output_names = [output.get_any_name() for output in model.outputs]
        self.metadata: dict[str, str] = _rt_metadata(model)
        wanted = compute or self.metadata.get(COMPUTE_KEY, "float32")
        if wanted not in _HINTS:
            raise ValueError(f"{os.fspath(path)}: compute {wanted!r} is not one of {', '.join(_HINTS)}")
        # Always an explicit hint: without one the plugin would choose bf16 on its own on bf16 CPUs.
        self.compute = wanted if wanted == "float32" or native_bf16() else "float32"
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[self.compute], "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """[B, 3, R, R] float32 -> boxes [B, Q, 4], logits [B, Q, K][, masks [B, Q, R/4, R/4]]."""
        results = self.request.infer({0: np.ascontiguousarray(pixels, dtype=np.float32)})
        # infer() hands back views of the request's output buffers, which the next call overwrites: copy.
        return [np.array(results[output]) for output in self.compiled.outputs]


def set_compute(path: str | os.PathLike[str], compute: str) -> Path:
    """Rewrite an IR's ``compute`` metadata entry (``float32`` or ``bfloat16``), atomically with its ``.bin``.

    Raises:
        ImportError: openvino is not installed.
        ValueError: an unknown ``compute``, or ``path`` cannot be read as an IR.
    """
    if compute not in _HINTS:
        raise ValueError(f"compute must be one of {', '.join(_HINTS)}, got {compute!r}")
    FORMAT.require(for_running=True)
    import openvino as ov

    model = _read_model(ov.Core(), path)
    model.set_rt_info(compute, [RT_INFO_ROOT, COMPUTE_KEY])
    return _save_atomically(ov, model, Path(path), half=False)


def quantize(
    float_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    calibration: Sequence[np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    batch: int = 1,
    exclude: Sequence[str] | None = None,
) -> Path:
    """Static full-integer INT8 of a float32 IR by NNCF post-training quantization, calibrated on preprocessed images.

    NNCF (``ModelType.TRANSFORMER``, ``mixed`` preset: symmetric int8 weights per output channel, asymmetric
    activations per tensor, ranges from the statistics of ``calibration``; no SmoothQuant) inserts FakeQuantize in
    front of the matrix products and convolutions; the CPU plugin runs them as int8 kernels, the rest (LayerNorm,
    Softmax, GridSample, the box arithmetic) stays float.

    Measured on the demo model (``bench/bench_deploy.py --weights --dataset``, 256 held-out images, 32 or 64
    calibration images), bbox / segm mAP50:95 points lost against float32: NNCF's default model type (which also
    quantizes the residual additions and the other element-wise inputs) 1.8-1.9 / 1.8-2.1; TRANSFORMER 0.5-0.7 /
    0.8-0.9. The largest score change of a demo test detection (16 images, threshold 0.5): 0.225 with the default
    model type, 0.030 with TRANSFORMER; SmoothQuant (alpha 0.5 on the products) or the symmetric ``performance``
    preset keep the mAP but move one detection by 0.44-0.46. Nano's forward is as fast (42-47 ms against 45-48 ms
    with the default model type, 2 threads).

    Args:
        float_path: the float32 IR written by :func:`export`.
        path: the INT8 ``.xml`` to write (atomically, with its ``.bin``).
        calibration: network inputs [1, 3, R, R] float32 (:func:`rfdetr.deploy.export.calibration.calibration_arrays`).
        metadata: entries for the IR's ``rt_info`` (written again: the quantizer rebuilds the model).
        batch: the file's static batch (inputs are repeated to fill it).
        exclude: node (friendly) names kept in float (mixed precision); default: the products of
            :data:`rfdetr.deploy.export.int8.FLOAT_GROUPS` (the two-stage proposal heads), as for ONNX: with them
            INT8, NNCF's file gave one of the demo model's test shapes another class.

    Raises:
        ImportError: openvino or nncf is not installed.
        ValueError: ``float_path`` cannot be read as an IR.
    """
    FORMAT.require(int8=True)
    import nncf
    import openvino as ov

    model = _read_model(ov.Core(), float_path)
    # Fold weight-only subgraphs (e.g. the q/k/v weights concatenated in the forward) into constants first: NNCF
    # would otherwise take them for activations and fail to build their statistics.
    from openvino import passes as ov_passes

    passes = ov_passes.Manager()
    passes.register_pass(ov_passes.ConstantFolding())
    passes.run_passes(model)
    dataset = nncf.Dataset(list(calibration), lambda item: np.repeat(item, batch, axis=0))
    if exclude is None:
        # Friendly names from the PyTorch frontend: "__module.model.transformer.enc_output.0/aten::linear/MatMul".
        patterns = [rf".*\.{re.escape(group)}[./].*" for group in FLOAT_GROUPS]
        ignored = nncf.IgnoredScope(patterns=patterns, validate=False)
        kept = f"{', '.join(FLOAT_GROUPS)} kept in float"
    else:
        ignored = nncf.IgnoredScope(names=list(exclude), validate=False) if exclude else None
        kept = f"{len(exclude)} nodes kept in float by request"
    # SmoothQuant off (alpha -1): on the products it moved a demo detection's score by 0.46 (see above), and on the
    # projector's 1x1 convolutions NNCF 3.4's pass fails ("cannot reshape array of size 262144 into shape
    # (64,64,1,1)").
    advanced = nncf.AdvancedQuantizationParameters(
        smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1, convolution=-1))
    quantized = nncf.quantize(model, dataset, subset_size=len(calibration), ignored_scope=ignored,
                              model_type=nncf.ModelType.TRANSFORMER,
                              # MIXED: asymmetric activations (after GELU and the projector they are far from
                              # symmetric); the symmetric preset moved one demo test detection's score by 0.44.
                              preset=nncf.QuantizationPreset.MIXED, advanced_parameters=advanced)
    for key, value in (metadata or {}).items():
        quantized.set_rt_info(str(value), [RT_INFO_ROOT, str(key)])
    path = _save_atomically(ov, quantized, Path(path), half=False)
    logger.info("quantized %s to INT8 with NNCF on %d calibration images (%s)", path, len(calibration), kept)
    return path
