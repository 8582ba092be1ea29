"""Per-layer INT8 sensitivity: node groups and the one-group-at-a-time measurement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rfdetr.deploy.export.sensitivity import int8_sensitivity, node_group, output_errors, quantizable_groups
from tests.deploy.models import tiny_segmenter

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("name", "group"), [
    ("/backbone.0/encoder/encoder/layer.2/mlp/MatMul_1", "backbone.encoder.layer.2"),
    ("/backbone.0/encoder/encoder/embeddings/patch_embeddings/projection/Conv", "backbone.encoder"),
    ("/backbone.0/projector/stages.0/stages.0.0/m.1/cv2/conv/Conv", "backbone.projector"),
    ("/transformer/decoder/layers.1/cross_attn/value_proj/MatMul", "transformer.decoder.layers.1"),
    ("/transformer/decoder/ref_point_head/layers.0/MatMul", "transformer.decoder"),
    ("/transformer/enc_out_bbox_embed.0/layers.2/MatMul", "transformer.enc_out_bbox_embed"),
    ("/class_embed/MatMul", "class_embed"),
    ("/blocks.1/dwconv/Conv", "blocks"),
    ("/MatMul_2", "mask_logits"),
])
def test_node_group(name: str, group: str) -> None:
    assert node_group(name) == group


def test_output_errors_compare_scores_not_raw_logits() -> None:
    boxes = np.zeros((1, 2, 4), np.float32)
    far = [boxes, np.full((1, 2, 3), -30.0, np.float32)]
    farther = [boxes + 0.1, np.full((1, 2, 3), -60.0, np.float32)]
    errors = output_errors([far], [farther])
    assert errors["boxes"] == pytest.approx(0.1) and errors["logits"] < 1e-12  # both scores are ~0


def test_sensitivity_one_group_at_a_time(tmp_path: Path) -> None:
    path = tiny_segmenter().export(tmp_path, format="onnx")
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(6)]
    groups = quantizable_groups(path)
    assert {"backbone.encoder.layer.0", "transformer.decoder.layers.1", "class_embed", "blocks"} <= set(groups)
    # Three groups (each is one quantization run; the bench measures them all).
    tried = ["backbone.encoder.layer.0", "class_embed", "mask_logits"]
    results = int8_sensitivity(path, inputs[:4], inputs[4:], groups=tried)
    assert {r.group for r in results[:-1]} == set(tried)
    assert [r.nodes for r in results if r.group == "class_embed"] == [len(groups["class_embed"])]
    assert results[-1].group == "all" and results[-1].nodes == sum(len(v) for v in groups.values())
    scores = [r.score for r in results[:-1]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert set(results[-1].errors) == {"boxes", "logits", "masks"}
    # Quantizing everything moves the outputs at least as much as the least sensitive group alone.
    assert results[-1].score >= scores[-1]


def test_int8_keeps_the_proposal_heads_in_float(tmp_path: Path) -> None:
    """By default the two-stage proposal heads (FLOAT_GROUPS) stay float; every other matrix product is INT8."""
    import onnx

    from rfdetr.deploy.export.formats.onnx import FLOAT_GROUPS, quantize

    path = tiny_segmenter().export(tmp_path, format="onnx")
    inputs = [np.random.default_rng(i).standard_normal((1, 3, 64, 64)).astype(np.float32) for i in range(2)]
    quantized = onnx.load(str(quantize(path, tmp_path / "q.onnx", inputs)))
    produced_by = {out: node.op_type for node in quantized.graph.node for out in node.output}
    floats, ints = set(), set()
    for node in quantized.graph.node:
        if node.op_type in ("MatMul", "Conv", "Gemm"):
            # A quantized product reads its weight (input 1) through a DequantizeLinear; a float one reads it as is
            # (its activation input may still come through one, when a quantized node shares that tensor).
            int8_weight = produced_by.get(node.input[1]) == "DequantizeLinear"
            (ints if int8_weight else floats).add(node_group(node.name))
    assert floats == set(FLOAT_GROUPS)
    assert not floats & ints and "backbone.encoder.layer.0" in ints and "class_embed" in ints
