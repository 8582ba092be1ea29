"""The vocabulary of full-integer INT8 that every format shares: I/O types, what is quantized, what stays float.

Formats quantize with their own tools (onnxruntime's ``quantize_static``, NNCF, PT2E for LiteRT), but they agree on
which parts of the network stay float: the groups below, named by the module that computes them. The ONNX node
names of the TorchScript exporter carry those module paths, so :func:`node_group` maps a node to its group; the per-
layer sensitivity study (:mod:`rfdetr.deploy.export.sensitivity`) ranks the groups with it.
"""

from __future__ import annotations

import os
import re

__all__ = ["DEFAULT_INT8_IO", "FLOAT_GROUPS", "INT8_IO", "ONNX_INT8_OPS", "node_group", "quantizable_groups"]

# Types of an INT8 file's input and outputs: float32 (quantized inside the file), or integers for accelerators that
# take nothing else (NPUs); the runner converts, so predict() is the same for all three.
INT8_IO: tuple[str, ...] = ("float", "int8", "uint8")
DEFAULT_INT8_IO = "float"

# Layer groups (:func:`node_group`) kept in float by default in every format: the two-stage proposal heads, whose
# scores choose the Q proposals the decoder refines, so a small INT8 error there swaps whole detections. Measured
# (bench/bench_int8_sensitivity.py, the demo model, 16 valid images): quantized alone they move the scores most of
# any group after the projector; keeping these 5 small products (about 1% of nano's MACs) in float halves the score
# error of the INT8 ONNX file (8.5e-3 -> 4.3e-3) and turns a 3.2-point bbox mAP50:95 loss into none.
FLOAT_GROUPS: tuple[str, ...] = ("transformer.enc_output", "transformer.enc_out_class_embed",
                                 "transformer.enc_out_bbox_embed")

# ONNX operators quantized to INT8: the matrix products and convolutions, which hold nearly all of the compute. The
# rest (LayerNorm, Softmax, GELU, GridSample, the box / score arithmetic) stays float: ORT has no faster integer
# kernels for them, and quantizing them only adds quantize / dequantize pairs.
ONNX_INT8_OPS: tuple[str, ...] = ("MatMul", "Conv", "Gemm")

_LAYER = re.compile(r"^(layer|layers)\.\d+$")
_INDEX = re.compile(r"\.\d+$")


def node_group(name: str) -> str:
    """The module group of an ONNX node name from the TorchScript exporter.

    ``/backbone.0/encoder/encoder/layer.2/mlp/MatMul`` -> ``backbone.encoder.layer.2`` (the patch embedding:
    ``backbone.encoder``); ``/transformer/decoder/layers.1/...`` -> ``transformer.decoder.layers.1``;
    ``/transformer/enc_out_class_embed.0/MatMul`` -> ``transformer.enc_out_class_embed``; ``/blocks.1/dwconv/Conv``
    -> ``blocks``; nodes of the top-level forward (the mask head's per-query products) -> ``mask_logits``.
    """
    modules = [p for p in name.split("/") if p][:-1]  # the last part is the node's own name
    if not modules:
        return "mask_logits"
    top = _INDEX.sub("", modules[0])
    if top == "backbone" and len(modules) > 1:
        layer = next((m for m in modules if _LAYER.match(m)), None)
        return f"backbone.{modules[1]}" + (f".{layer}" if layer and modules[1] == "encoder" else "")
    if top == "transformer" and len(modules) > 1:
        if modules[1] == "decoder" and len(modules) > 2 and _LAYER.match(modules[2]):
            return f"transformer.decoder.{modules[2]}"
        return f"transformer.{_INDEX.sub('', modules[1])}"
    return top


def quantizable_groups(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Group -> names of an ONNX file's quantizable nodes (:data:`ONNX_INT8_OPS`), in graph order."""
    import onnx

    groups: dict[str, list[str]] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in ONNX_INT8_OPS:
            groups.setdefault(node_group(node.name), []).append(node.name)
    return groups
