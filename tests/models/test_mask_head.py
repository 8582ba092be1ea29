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
from tests.helpers import perturb

pytestmark = pytest.mark.usefixtures("one_thread")


def _perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random non-trivial weights (the bias and some projections start at zero)."""
    return perturb(module, seed, scale=0.1)


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


@pytest.mark.parametrize("kind", ["full", "nano", "dynamic"])
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


@pytest.mark.parametrize("kind", ["nano", "dynamic"])
def test_unfrozen_segmenter_is_the_single_stage_model(kind: str) -> None:
    cfg = TINY_CONFIG.replace(num_classes=2, resolution=96, positional_encoding_size=6)
    model = Segmenter(build_model(cfg), build_mask_head(MaskHeadConfig(kind, cfg.hidden_dim, cfg.dec_layers)),
                      freeze_detector=False).train()
    out = model(torch.randn(1, 3, 96, 96))
    assert model.detector.training and out["pred_logits"].shape[1] == cfg.group_detr * cfg.num_queries
    assert "pred_masks" in out["enc_outputs"] and out["pred_boxes"].requires_grad


# ---------------------------------------------------------------------------------------------------------------------
# MaskHeadDynamic
# ---------------------------------------------------------------------------------------------------------------------


def _dynamic_inputs(batch: int = 2, queries: int = 5, dim: int = 32, size: int = 64
                    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """(stride-16 map [B, D, S/16, S/16], queries per layer [B, Q, D], pixels [B, 3, S, S], boxes per layer)."""
    g = torch.Generator().manual_seed(1)
    spatial = torch.randn(batch, dim, size // 16, size // 16, generator=g)
    queries_ = [torch.randn(batch, queries, dim, generator=g) for _ in range(2)]
    pixels = torch.randn(batch, 3, size, size, generator=g)
    boxes = [torch.cat([torch.rand(batch, queries, 2, generator=g) * 0.6 + 0.2,
                        torch.rand(batch, queries, 2, generator=g) * 0.4 + 0.05], -1) for _ in range(2)]
    return spatial, queries_, pixels, boxes


def test_dynamic_head_sizes_and_config() -> None:
    head = build_mask_head(MaskHeadConfig("dynamic", 256, 2))
    assert type(head).__name__ == "MaskHeadDynamic" and head.config.kind == "dynamic"
    assert sum(p.numel() for p in head.parameters()) == 124_753  # 16 % of MaskHead, mostly the controller
    assert resolve_mask_head_kind("dynamic", "nano") == "dynamic"
    assert MaskHeadConfig.from_dict(head.config.to_dict()) == head.config
    with pytest.raises(ValueError, match="power-of-two"):
        build_mask_head(MaskHeadConfig("dynamic", 32, 2, downsample_ratio=3))


def test_dynamic_sparse_logits_equal_the_dense_ones() -> None:
    """Training reads the matched masks (``selected``) and the matcher reads points (``at_shared_points``): both are
    the dense inference function, evaluated for fewer queries or at fewer places."""
    head = _perturbed(build_mask_head(MaskHeadConfig("dynamic", 32, 2, width=16)))
    spatial, queries, pixels, boxes = _dynamic_inputs()
    dense = head(spatial, queries, (64, 64), pixels=pixels, boxes=boxes)
    sparse = head.forward_sparse(spatial, queries, (64, 64), pixels=pixels, boxes=boxes)
    assert [d.shape for d in dense] == [torch.Size([2, 5, 16, 16])] * 2
    torch.testing.assert_close(head.forward_last(spatial, queries[-1], (64, 64), pixels=pixels, boxes=boxes[-1]),
                               dense[-1], rtol=0, atol=0)
    batch_idx, query_idx = torch.tensor([0, 1, 1]), torch.tensor([4, 0, 2])
    # Pixel centres: bilinear sampling there returns the feature itself, so the point logits are the dense ones.
    ys, xs = torch.tensor([0, 3, 15, 7]), torch.tensor([0, 9, 15, 2])
    centres = torch.stack([(xs + 0.5) / 16, (ys + 0.5) / 16], -1)
    for d, s in zip(dense, sparse, strict=True):
        # The same per-pixel sums of 10 products in another batching: float32 bound K x 2^-24 x sum |terms| with
        # K = 10 and |terms| summing to < 40 here: 2.4e-5; measured 0 (Zen 4).
        torch.testing.assert_close(s.selected(batch_idx, query_idx), d[batch_idx, query_idx], rtol=0, atol=3e-5)
        torch.testing.assert_close(s.at_shared_points(centres), d[:, :, ys, xs], rtol=0, atol=3e-5)


def test_dynamic_masks_follow_their_box() -> None:
    """A query's mask reads its own box: moving one box changes that query's logits and no other's."""
    head = _perturbed(build_mask_head(MaskHeadConfig("dynamic", 32, 2, width=16)))
    spatial, queries, pixels, boxes = _dynamic_inputs()
    before = head.forward_last(spatial, queries[-1], (64, 64), pixels=pixels, boxes=boxes[-1])
    moved = boxes[-1].clone()
    moved[1, 3, :2] += 0.2
    after = head.forward_last(spatial, queries[-1], (64, 64), pixels=pixels, boxes=moved)
    changed = (after - before).abs().amax(dim=(-1, -2))
    assert changed[1, 3] > 1e-3 and changed.sum() == changed[1, 3]
    with pytest.raises(ValueError, match="pixels= and boxes="):
        head.forward_last(spatial, queries[-1], (64, 64))


def test_dynamic_head_loss_falls_and_the_detector_stays_untouched() -> None:
    """A tiny stage-2 run: 30 Adam steps of the stage-2 loss on two fixed images lower it; the frozen detector's
    weights do not move and get no gradient."""
    from rfdetr.train.config import LossConfig
    from rfdetr.train.stage2 import build_stage2_criterion

    cfg = TINY_CONFIG.replace(num_classes=2, resolution=96, positional_encoding_size=6)
    torch.manual_seed(0)
    detector = build_model(cfg)
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    model = Segmenter(detector, build_mask_head(MaskHeadConfig("dynamic", cfg.hidden_dim, cfg.dec_layers))).train()
    pixels = torch.randn(2, 3, 96, 96)
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    targets = []
    for cx, cy, r in ((30, 40, 20), (60, 50, 25)):
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[None]
        box = torch.tensor([[cx / 96, cy / 96, 2 * r / 96, 2 * r / 96]])
        targets.append({"labels": torch.tensor([1]), "boxes": box, "masks": mask})
    criterion = build_stage2_criterion(LossConfig(), cfg.dec_layers)
    optimizer = torch.optim.Adam(model.mask_head.parameters(), lr=2e-3)
    with torch.no_grad():
        detections = model.detect(pixels)
    losses = []
    for _ in range(30):
        loss = criterion.total_loss(criterion(model(pixels, detections=detections), targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is None for p in detector.parameters())
    for key, value in detector.state_dict().items():
        assert torch.equal(value, before[key]), key
