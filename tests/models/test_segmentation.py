"""Segmentation model forward (eval + train), the standalone mask head, post-processing and bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from rfdetr.config import MODEL_PRESETS
from rfdetr.losses.mask_logits import DenseMaskLogits, SparseMaskLogits
from rfdetr.models import PostProcess, RFDETRModel, build_model

# Seg-nano geometry (patch 12, no windows) on a 96x72 input, with few queries and groups to stay fast.
TINY_SEG = MODEL_PRESETS["seg-nano"].replace(
    resolution=96, positional_encoding_size=8, num_queries=12, num_select=12, group_detr=3, dec_layers=2
)
HEIGHT, WIDTH = 96, 72


@pytest.fixture(scope="module")
def seg_model() -> RFDETRModel:
    torch.manual_seed(0)
    return build_model(TINY_SEG).eval()


def check_outputs(out: dict, batch: int, queries: int) -> None:
    mask_shape = (batch, queries, HEIGHT // 4, WIDTH // 4)
    assert out["pred_logits"].shape == (batch, queries, TINY_SEG.num_classes + 1)
    assert out["pred_boxes"].shape == (batch, queries, 4)
    assert out["pred_masks"].shape == mask_shape
    assert len(out["aux_outputs"]) == TINY_SEG.dec_layers - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_masks"].shape == mask_shape
    assert out["enc_outputs"]["pred_masks"].shape == mask_shape
    assert out["enc_outputs"]["pred_boxes"].shape == (batch, queries, 4)


def test_seg_forward_eval_and_train(seg_model: RFDETRModel) -> None:
    x = torch.randn(2, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        check_outputs(seg_model(x), 2, TINY_SEG.num_queries)
    seg_model.train()
    try:
        dense = seg_model(x, dense_masks=True)
        check_outputs(dense, 2, TINY_SEG.num_queries * TINY_SEG.group_detr)
        out = seg_model(x)  # training default: factorised masks, the same logits at any point
        points = torch.rand(7, 2)
        for sparse, full in ((out, dense), *zip(out["aux_outputs"], dense["aux_outputs"], strict=True),
                             (out["enc_outputs"], dense["enc_outputs"])):
            assert isinstance(sparse["pred_masks"], SparseMaskLogits)
            torch.testing.assert_close(sparse["pred_masks"].at_shared_points(points),
                                       DenseMaskLogits(full["pred_masks"]).at_shared_points(points))
        loss = (out["pred_masks"].at_shared_points(points).mean() + out["pred_boxes"].sum()
                + out["enc_outputs"]["pred_logits"].mean())
        loss.backward()
    finally:
        seg_model.eval()
    grads = {n for n, p in seg_model.named_parameters() if p.grad is not None}
    assert "segmentation_head.bias" in grads and "backbone.0.encoder.encoder.embeddings.cls_token" in grads
    assert "transformer.enc_out_class_embed.2.weight" in grads  # every group's two-stage head is trained
    assert "backbone.0.encoder.encoder.embeddings.mask_token" not in grads
    seg_model.zero_grad(set_to_none=True)


def test_forward_features_and_standalone_mask_head(seg_model: RFDETRModel) -> None:
    """The mask head on its own reproduces the model's masks from forward_features()."""
    x = torch.randn(1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        feats = seg_model.forward_features(x)
        out = seg_model(x)
        layers, queries, dim = TINY_SEG.dec_layers, TINY_SEG.num_queries, TINY_SEG.hidden_dim
        assert feats["hs"].shape == (layers, 1, queries, dim)
        assert feats["references"].shape == (1, queries, 4)
        assert [tuple(f.shape) for f in feats["features"]] == [(1, dim, HEIGHT // 12, WIDTH // 12)]
        masks = seg_model.segmentation_head(feats["features"][0], list(feats["hs"]), (HEIGHT, WIDTH))
        torch.testing.assert_close(masks[-1], out["pred_masks"])
        torch.testing.assert_close(masks[0], out["aux_outputs"][0]["pred_masks"])
        last = seg_model.segmentation_head.forward_last(feats["features"][0], feats["hs"][-1], (HEIGHT, WIDTH))
        torch.testing.assert_close(last, out["pred_masks"])
        boxes, logits, export_masks = seg_model.forward_export(x)
        torch.testing.assert_close(export_masks, out["pred_masks"])
        torch.testing.assert_close(logits, out["pred_logits"])


def test_postprocess_masks_and_threshold(seg_model: RFDETRModel) -> None:
    with torch.no_grad():
        out = seg_model(torch.randn(2, 3, HEIGHT, WIDTH))
    sizes = torch.tensor([[50, 40], [30, 70]])
    results = PostProcess(num_select=5)(out, sizes)
    for result, (h, w) in zip(results, sizes.tolist(), strict=True):
        assert result["masks"].shape == (5, 1, h, w) and result["masks"].dtype == torch.bool
        assert (result["scores"][:-1] >= result["scores"][1:]).all()
        assert (result["boxes"] >= 0).all() and (result["boxes"][:, 0::2] <= w).all()
        assert (result["boxes"][:, 1::2] <= h).all()
    threshold = results[0]["scores"][2].item()
    kept = PostProcess(num_select=5)(out, sizes, score_threshold=threshold)[0]
    assert len(kept["scores"]) == 2 and kept["masks"].shape[0] == 2


def test_bf16_autocast_forward(seg_model: RFDETRModel) -> None:
    """bf16 autocast runs end to end; the projector features stay close to fp32 (outputs themselves are not
    compared: with random weights the two-stage top-k is full of ties that bf16 reorders)."""
    x = torch.randn(1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        ref = seg_model.forward_features(x)["features"][0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = seg_model(x)
            feats = seg_model.forward_features(x)["features"][0]
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        assert torch.isfinite(out[key].float()).all()
    assert out["pred_masks"].shape == (1, TINY_SEG.num_queries, HEIGHT // 4, WIDTH // 4)
    rel = (feats.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_factorised_masks_equal_the_per_pixel_projection() -> None:
    """``masks()`` moves the 1x1 spatial projection onto the queries; rfdetr projects every pixel. Same logits."""
    from rfdetr.models.segmentation_head import SegmentationHead

    torch.manual_seed(3)
    head = SegmentationHead(dim=16, num_blocks=2)
    torch.nn.init.normal_(head.spatial_features_proj.bias)
    torch.nn.init.normal_(head.bias)
    pixels, queries = torch.randn(2, 16, 9, 7), torch.randn(2, 5, 16)
    projected = head.spatial_features_proj(pixels)  # [B, D, h, w], upstream's order of operations
    expected = torch.einsum("bchw,bnc->bnhw", projected, head.project_queries(queries)) + head.bias
    # An exact identity (a 1x1 projection is linear, so it can move onto the queries): float32 bound K x 2^-24 x
    # magnitude with K = 16 + 16 terms, |logits| <= 10.3: 2e-5, within 1e-5 + 1e-5 x |expected| (1.1e-4 at 10.3);
    # measured 9.5e-7 (Zen 4).
    torch.testing.assert_close(head.masks(pixels, queries), expected, rtol=1e-5, atol=1e-5)


def test_seg_head_inference_path_matches_autograd_path() -> None:
    """Eval without autograd runs the depthwise blocks channels-last and in place; same logits as with autograd."""
    from rfdetr.models.segmentation_head import SegmentationHead

    torch.manual_seed(4)
    head = SegmentationHead(dim=16, num_blocks=3).eval()
    for param in head.parameters():
        torch.nn.init.normal_(param, std=0.3)
    features, queries = torch.randn(2, 16, 5, 6), [torch.randn(2, 7, 16) for _ in range(3)]
    features_before = features.clone()
    expected = head(features, queries, (40, 48))
    assert expected[0].requires_grad  # the autograd path
    with torch.no_grad():
        got = head(features, queries, (40, 48))
        last = head.forward_last(features, queries[-1], (40, 48))
    torch.testing.assert_close(features, features_before, rtol=0, atol=0)  # inputs untouched
    # The same ops channels-last and in place, so only the association differs: float32 bound K x 2^-24 x magnitude
    # with K = 3 blocks x (9 depthwise taps + 16 pointwise) = 75 and |logits| <= 38: 1.7e-4, within 1e-5 + 1e-5 x
    # |expected| (3.9e-4 at 38); measured 5.7e-6 (Zen 4).
    for a, b in zip(got, expected, strict=True):
        assert a.shape == (2, 7, 10, 12)
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, expected[-1].detach(), rtol=1e-5, atol=1e-5)
