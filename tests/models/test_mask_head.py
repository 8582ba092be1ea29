"""MaskHead / MaskHeadNano and the frozen-detector Segmenter: sizes, equivalences, freezing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rfdetr.config import TINY_CONFIG
from rfdetr.losses.mask_logits import DenseMaskLogits
from rfdetr.models import build_model
from rfdetr.models.mask_head import MaskHeadConfig, MaskHeadNano, build_mask_head, resolve_mask_head_kind
from rfdetr.models.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_thread")


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random non-trivial weights (the bias and some projections start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def test_nano_head_is_under_a_quarter_of_maskhead() -> None:
    """The issue's budget, on nano's sizes (D = 256, 2 decoder layers)."""
    full = build_mask_head(MaskHeadConfig("full", 256, 2))
    nano = build_mask_head(MaskHeadConfig("nano", 256, 2))
    n_full, n_nano = (sum(p.numel() for p in h.parameters()) for h in (full, nano))
    assert (n_full, n_nano) == (795_393, 20_513)
    assert n_nano <= 0.25 * n_full


def test_nano_projects_before_upsampling_without_changing_the_function() -> None:
    """A 1x1 conv commutes with bilinear resizing, so projecting the stride-16 map first is exact (and 16x cheaper)."""
    head = _perturbed(MaskHeadNano(32, 2, width=8))
    x = torch.randn(2, 32, 6, 6)
    after = head.input_proj(F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False))
    # An exact identity in exact arithmetic: float32 bound K x 2^-24 x magnitude with K = 32 channels + 4 bilinear
    # taps and |out| <= 2.9: 6.2e-6, within 1e-5 + 1e-5 x |expected| (3.9e-5 at 2.9); measured 7.2e-7 (Zen 4).
    torch.testing.assert_close(head._projected(x, (96, 96)), after, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["full", "nano"])
def test_sparse_training_logits_equal_the_dense_ones(kind: str) -> None:
    head = _perturbed(build_mask_head(MaskHeadConfig(kind, 32, 2, width=16)))
    spatial, queries = torch.randn(2, 32, 4, 4), [torch.randn(2, 5, 32), torch.randn(2, 5, 32)]
    dense = head(spatial, queries, (64, 64))
    sparse = head.forward_sparse(spatial, queries, (64, 64))
    assert [d.shape for d in dense] == [torch.Size([2, 5, 16, 16])] * 2
    torch.testing.assert_close(head.forward_last(spatial, queries[-1], (64, 64)), dense[-1])
    batch_idx, query_idx = torch.tensor([0, 1, 1]), torch.tensor([4, 0, 2])
    points = torch.rand(3, 50, 2)
    for d, s in zip(dense, sparse, strict=True):
        expected = DenseMaskLogits(d).at_points(batch_idx, query_idx, points)
        # Sampling then the per-pixel dot product equals the dot product then sampling (both linear): float32 bound
        # K x 2^-24 x magnitude with K = 32 channels + 4 bilinear taps and |logits| <= 12.2: 2.6e-5; the allowed
        # 1e-5 + 1e-4 x |expected| is up to 1.2e-3; measured 1.9e-6 (Zen 4).
        torch.testing.assert_close(s.at_points(batch_idx, query_idx, points), expected, rtol=1e-4, atol=1e-5)


def test_config_round_trip_and_auto_choice() -> None:
    cfg = MaskHeadConfig("nano", 256, 2)
    assert MaskHeadConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["key_prefix"] == "mask_head."
    assert MaskHeadConfig("full", 256, 2).key_prefix == "segmentation_head."
    assert resolve_mask_head_kind("auto", "nano") == "nano" and resolve_mask_head_kind("auto", "small") == "full"
    assert resolve_mask_head_kind("full", "nano") == "full"
    with pytest.raises(ValueError, match="mask head kind"):
        MaskHeadConfig("big", 256, 2)


@pytest.mark.parametrize("kind", ["full", "nano"])
def test_segmenter_trains_the_head_only(kind: str) -> None:
    cfg = TINY_CONFIG.replace(num_classes=2, resolution=96, positional_encoding_size=6)
    detector = build_model(cfg)
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    model = Segmenter(detector, build_mask_head(MaskHeadConfig(kind, cfg.hidden_dim, cfg.dec_layers))).train()
    assert model.training and not detector.training  # frozen = eval mode, whatever train() is called with
    out = model(torch.randn(2, 3, 96, 96))
    assert len(out["aux_outputs"]) == cfg.dec_layers - 1 and "enc_outputs" not in out
    assert out["pred_logits"].shape == (2, cfg.num_queries, 3)  # one query group
    loss = sum(m.at_shared_points(torch.rand(10, 2)).sum() for m in
               [out["pred_masks"], *(a["pred_masks"] for a in out["aux_outputs"])])
    loss.backward()
    assert all(p.grad is None for p in detector.parameters())
    assert all(p.grad is not None for p in model.mask_head.parameters())
    model.eval()
    assert model(torch.randn(1, 3, 96, 96))["pred_masks"].shape == (1, cfg.num_queries, 24, 24)
    for key, value in detector.state_dict().items():
        assert torch.equal(value, before[key])
    with pytest.raises(ValueError, match="already has a segmentation head"):
        Segmenter(build_model(cfg.replace(segmentation_head=True)), model.mask_head)


def test_unfrozen_segmenter_is_the_single_stage_model() -> None:
    cfg = TINY_CONFIG.replace(num_classes=2, resolution=96, positional_encoding_size=6)
    model = Segmenter(build_model(cfg), build_mask_head(MaskHeadConfig("nano", cfg.hidden_dim, cfg.dec_layers)),
                      freeze_detector=False).train()
    out = model(torch.randn(1, 3, 96, 96))
    assert model.detector.training and out["pred_logits"].shape[1] == cfg.group_detr * cfg.num_queries
    assert "pred_masks" in out["enc_outputs"] and out["pred_boxes"].requires_grad
