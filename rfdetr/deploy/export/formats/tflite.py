"""TFLite (LiteRT flatbuffer) export of detection, single-stage segmentation and stage-2 models, via ``litert_torch``.

The graph is the single-group export forward (:class:`rfdetr.deploy.export.graph.ExportForward`), captured with
``torch.export`` and lowered by litert-torch (no ONNX, no TensorFlow), at a fixed batch and square resolution:

* input ``input`` [B, 3, R, R] float32, **NCHW** (PyTorch's layout, kept by the converter): RGB in [0, 1], bilinearly
  resized to R x R (no antialias), then normalised with the ``mean`` / ``std`` of the metadata;
* outputs, by signature name: ``dets`` [B, Q, 4] normalised cxcywh boxes, ``labels`` [B, Q, K] class logits and, for
  models with masks, ``masks`` [B, Q, R/4, R/4] mask logits;
* metadata: the :func:`rfdetr.deploy.export.metadata.export_metadata` entries as one UTF-8 JSON object (``class_names``
  list, ``resolution``, ``mean``, ``std``, ``num_select``, ``masks`` ...) in the flatbuffer's own ``metadata`` table
  under the name :data:`METADATA_NAME` (any flatbuffer reader finds it; :func:`read_metadata`), so no file travels
  beside the model.

Deformable attention's ``F.grid_sample`` (bilinear, zeros padding, align_corners=False) needs no rewrite here:
litert-torch lowers torch's own decomposition of it (corner indices, in-bounds masks and ``GATHER_ND``), and
``tests/deploy/test_tflite.py`` checks that lowering against eager ``F.grid_sample`` on points inside and outside the
map. The antialiased bicubic position-embedding resize never reaches the converter (it is baked at the export
resolution, :func:`rfdetr.deploy.export.graph.bake_position_embeddings`).

``half=True`` stores the weights as float16 (ai-edge-quantizer's float casting, with explicit dequantize ops), so the
file is half the size; activations and arithmetic stay float32.

``int8=True`` (:func:`quantize_module`) is static full-integer INT8 by PT2E on the PyTorch graph, not on a float file
(ai-edge-quantizer 0.10's static recipes on our converted file gave files LiteRT refuses): int8 per-channel weights and
int8 per-tensor activations calibrated on the user's images for the FULLY_CONNECTED / CONV_2D ops, the two-stage
proposal heads and the projector kept float (:mod:`rfdetr.deploy.export.formats.tflite_int8`). ``io="int8" | "uint8"``
gives the file integer input and outputs (scale and zero point in each tensor's quantization parameters) for
accelerators that take nothing else; :class:`Session` quantizes the float input and dequantizes the outputs, so
``predict()`` is unchanged.

``litert-torch`` and ``ai-edge-litert`` are optional dependencies (``pip install litert-torch ai-edge-litert``);
they are imported only when exporting or running a file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfdetr.deploy.export.formats import FORMATS
from rfdetr.deploy.export.formats.litert import (
    METADATA_NAME,
    NamedIO,
    converter,
    embed_metadata,
    quiet_converter,
)
from rfdetr.deploy.export.graph import INPUT_NAME, OUTPUT_NAMES, ExportForward
from rfdetr.deploy.export.metadata import decode_metadata
from rfdetr.util.atomic import write_bytes_atomic

__all__ = ["INPUT_NAME", "METADATA_NAME", "OUTPUT_NAMES", "Session", "embed_metadata", "export",
           "read_metadata"]

logger = logging.getLogger(__name__)

# litert-torch's name for the signature of a module converted without an explicit one.
SIGNATURE = "serving_default"
# Every TFLite flatbuffer carries this identifier at bytes 4..8.
FILE_IDENTIFIER = b"TFL3"
FORMAT = FORMATS["tflite"]


def export(
    module: ExportForward,
    path: str | os.PathLike[str],
    example: torch.Tensor,
    metadata: Mapping[str, str] | None = None,
    *,
    half: bool = False,
) -> Path:
    """Write a prepared export module (:func:`rfdetr.deploy.export.graph.prepare_export`) as a ``.tflite`` file.

    Args:
        module: the traced forward (eval, CPU, float32, position embeddings baked).
        path: the ``.tflite`` file (written atomically; parent folders are created, an existing file is replaced).
        example: [B, 3, R, R] input the graph is captured with; B and R are static in the file.
        metadata: string entries stored in the flatbuffer's metadata (:data:`METADATA_NAME`).
        half: store the weights as float16 (computation stays float32).

    Raises:
        ImportError: litert-torch is not installed.
        RuntimeError: the converter failed (nothing is written).
    """
    litert_torch = converter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One eager run fills the cache of the two-stage proposal grid (rfdetr.models.transformer.proposal_grid) with
    # real tensors; torch.export then takes them as constants. Built under export's fake tensors instead, the grid's
    # "are all proposals valid" branch would be a data-dependent guard that torch.export refuses.
    with torch.no_grad():
        module(example)
    with quiet_converter():
        edge = litert_torch.convert(NamedIO(module).eval(), sample_kwargs={INPUT_NAME: example})
        content = bytes(edge.model_content())
    if half:
        content = _float16_weights(content)
    content = embed_metadata(content, metadata or {})

    write_bytes_atomic(path, content)
    batch, _, height, width = example.shape
    logger.info("exported %s (%s, %s weights, input [%d, 3, %d, %d] NCHW, %.1f MB)", path,
                ", ".join(OUTPUT_NAMES[: 3 if module.with_masks else 2]), "float16" if half else "float32", batch,
                height, width, len(content) / 1e6)
    return path


def _float16_weights(content: bytes) -> bytes:
    """The flatbuffer with every constant weight cast to float16 and dequantized at load time.

    ai-edge-quantizer's weight-only float casting (litert-torch's own fp16 recipe, applied to the converted file so
    that the graph is captured only once).
    """
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer

    qt = quantizer.Quantizer(bytearray(content))
    qt.add_weight_only_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=16,
        granularity=qtyping.QuantGranularity.TENSORWISE,
        algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
    )
    return bytes(qt.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model)


def _raw_metadata(content: bytes | bytearray | memoryview, name: str) -> dict[str, str]:
    """The JSON entry ``name`` of a flatbuffer's metadata table as strings, or ``{}`` when absent."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if (entry.Name() or b"").decode() != name:
            continue
        buffer = model.Buffers(entry.Buffer())
        if buffer.Offset() > 1:  # a buffer stored after the flatbuffer (files above 2 GB)
            raw = bytes(content[buffer.Offset(): buffer.Offset() + buffer.Size()])
        else:
            raw = buffer.DataAsNumpy().tobytes()
        data = json.loads(raw.decode())
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    return {}


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of an exported file, JSON values decoded (``class_names``, ``mean``, ``std``, ``resolution`` ...).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a TFLite flatbuffer.
    """
    content = Path(path).read_bytes()
    _check_identifier(content, path)
    return decode_metadata(_raw_metadata(content, METADATA_NAME))


def _check_identifier(content: bytes, path: str | os.PathLike[str]) -> None:
    if content[4:8] != FILE_IDENTIFIER:
        raise ValueError(f"{os.fspath(path)}: not a TFLite flatbuffer (no {FILE_IDENTIFIER.decode()} identifier)")


class Session:
    """A ``.tflite`` file in the LiteRT interpreter (XNNPACK on the CPU; the runner's interface, see
    :mod:`rfdetr.deploy.export.formats`).

    Args:
        path: the file.
        threads: interpreter threads (default: LiteRT's choice).

    Raises:
        ImportError: ai-edge-litert is not installed.
        ValueError: the file is not a TFLite flatbuffer LiteRT can load, or is not an RF-DETR export.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        FORMAT.require(for_running=True)
        from ai_edge_litert.interpreter import Interpreter
        name = os.fspath(path)
        content = Path(path).read_bytes()
        # The identifier check comes first: LiteRT's verifier reports a foreign file in several lines of C++ logs.
        _check_identifier(content, path)
        try:
            self.interpreter = Interpreter(model_content=content, num_threads=threads)
            signatures = self.interpreter.get_signature_list()
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"{name}: LiteRT cannot load it as a TFLite model: "
                             f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__}"
                             ) from None
        signature = signatures.get(SIGNATURE, {})
        outputs = set(signature.get("outputs", []))
        if signature.get("inputs") != [INPUT_NAME] or not {"dets", "labels"} <= outputs:
            raise ValueError(f"{name} is not an RF-DETR export: expected a {SIGNATURE!r} signature with input "
                             f"{INPUT_NAME!r} and outputs dets, labels[, masks], found {signatures}")
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        shape = [int(d) for d in self.runner.get_input_details()[INPUT_NAME]["shape"]]
        if len(shape) != 4:
            raise ValueError(f"{name} is not an RF-DETR export: input {INPUT_NAME!r} has shape {shape}, expected "
                             "[B, 3, R, R]")
        self.input_shape: tuple[int | None, int, int, int] = (shape[0], shape[1], shape[2], shape[3])
        # Outputs by name, in the contract's order (the flatbuffer's own order is the converter's business).
        self.output_names = [n for n in OUTPUT_NAMES if n in outputs]
        self.metadata: dict[str, str] = _raw_metadata(content, METADATA_NAME)
        # Integer I/O (INT8 files exported with int8 / uint8 I/O): dtype, scale and zero point of the input and of
        # each output, so that run() takes and returns float32 whatever the file's types.
        self.input_type = self._quantization(self.runner.get_input_details()[INPUT_NAME])
        details = self.runner.get_output_details()
        self.output_types = {name: self._quantization(details[name]) for name in self.output_names}

    @staticmethod
    def _quantization(detail: Mapping[str, Any]) -> tuple[Any, float, int] | None:
        """(dtype, scale, zero point) of an integer tensor, ``None`` for a float one."""
        dtype = np.dtype(detail["dtype"])
        if dtype.kind not in "iu":
            return None
        scale, zero = detail["quantization"]
        return dtype, float(scale), int(zero)

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """[B, 3, R, R] float32 -> boxes [B, Q, 4], logits [B, Q, K][, masks [B, Q, R/4, R/4]] (float32)."""
        feed = np.ascontiguousarray(pixels, dtype=np.float32)
        if self.input_type is not None:
            dtype, scale, zero = self.input_type
            info = np.iinfo(dtype)
            feed = np.clip(np.round(feed / scale) + zero, info.min, info.max).astype(dtype)
        outputs = self.runner(**{INPUT_NAME: feed})
        result = []
        for name in self.output_names:
            value, quantization = outputs[name], self.output_types[name]
            if quantization is not None:
                _, scale, zero = quantization
                value = ((value.astype(np.float32) - zero) * scale).astype(np.float32)
            result.append(value)
        return result
