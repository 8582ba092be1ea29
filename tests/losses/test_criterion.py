"""SetCriterion: parity with rfdetr 1.11.2 and invariants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from rfdetr.losses import SparseMaskLogits, build_criterion
from rfdetr.losses.functional import ia_bce_loss
from tests.helpers import shared_path

LOSS_REF = ("refs", "rf-detr-nano-perturbed-loss.pt")
DATA = Path(__file__).resolve().parent / "data"
# The shared reference stores only the final decoder layer's outputs; the auxiliary (_0) and encoder (_enc) terms,
# the total and the gradients are checked from our own train-mode forward in tests/models/test_parity.py.
SEG_REF = DATA / "seg_criterion_parity.pt"
# Our criterion against rfdetr's on the same float32 inputs (reference from another host): each term is a float32
# sum over the matched pairs and pixels, whose relative rounding error is ~sqrt(K) * 2^-24 (K up to ~1e5 mask
# points: ~2e-5); 1e-4 relative is that with a 5x margin for a different reduction order.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(shared_path(*LOSS_REF), weights_only=True)  # plain tensors/dicts/lists: no allow-listing needed


def _rel(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-12)


def _assert_terms(losses: dict[str, torch.Tensor], expected: dict, keys: list[str]) -> None:
    bad = {k: (float(losses[k]), float(expected[k])) for k in keys if _rel(losses[k], expected[k]) > REL_TOL}
    assert not bad, f"terms off by more than {REL_TOL} relative: {bad}"


# ------------------------------------------------------------------------------------------------ parity


def test_reference_final_layer_and_weight_dict(reference: dict) -> None:
    criterion = build_criterion(dec_layers=2).train()
    assert criterion.weight_dict == reference["weight_dict"]
    assert list(criterion.weight_dict) == list(reference["weight_dict"])
    torch.manual_seed(777)
    losses = criterion(dict(reference["train_outputs"]), reference["targets"])
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"}
    _assert_terms(losses, reference["loss_dict"], sorted(losses))


def _seg_outputs(inputs: dict, dense: bool) -> dict:
    def one(o: dict) -> dict:
        if dense:
            masks = torch.einsum("bqc,bchw->bqhw", o["query_features"], o["spatial_features"]) + o["bias"]
        else:
            masks = {k: o[k] for k in ("spatial_features", "query_features", "bias")}
        return {"pred_logits": o["pred_logits"], "pred_boxes": o["pred_boxes"], "pred_masks": masks}

    return {**one(inputs["main"]), "aux_outputs": [one(inputs["aux"])], "enc_outputs": one(inputs["enc"])}


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_segmentation_parity(dense: bool) -> None:
    """Mask costs, PointRend point sampling and mask losses equal rfdetr 1.11.2's under the same seed."""
    ref = torch.load(SEG_REF, weights_only=True)
    inputs = ref["inputs"]
    criterion = build_criterion(dec_layers=2, segmentation=True).train()
    torch.manual_seed(0)
    losses = criterion(_seg_outputs(inputs, dense), inputs["targets"])
    expected = ref["loss_dict_dense" if dense else "loss_dict_sparse"]
    assert set(losses) == set(expected)
    _assert_terms(losses, expected, sorted(expected))
    torch.manual_seed(0)
    indices = criterion.matcher(_seg_outputs(inputs, dense), inputs["targets"], group_detr=13)
    for (q, t), (ref_q, ref_t) in zip(indices, ref["indices_last"], strict=True):
        assert torch.equal(q, ref_q) and torch.equal(t, ref_t)


# ---------------------------------------------------------------------------------------------- invariants


def _outputs(batch: int, queries: int, classes: int, seed: int, aux: int = 1, enc: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)

    def one() -> dict[str, torch.Tensor]:
        return {
            "pred_logits": torch.randn(batch, queries, classes, generator=g) - 3.0,
            "pred_boxes": torch.rand(batch, queries, 4, generator=g) * 0.4 + 0.3,
        }

    out = one()
    out["aux_outputs"] = [one() for _ in range(aux)]
    if enc:
        out["enc_outputs"] = one()
    return out


def _targets(sizes: list[int], classes: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "labels": torch.randint(0, classes, (n,), generator=g),
            "boxes": torch.rand(n, 4, generator=g) * 0.3 + 0.35,
            "iscrowd": torch.zeros(n, dtype=torch.int64),
        }
        for n in sizes
    ]


def test_keys_weights_and_finiteness() -> None:
    criterion = build_criterion(dec_layers=3, group_detr=2).train()
    losses = criterion(_outputs(2, 2 * 5, 4, seed=0, aux=2), _targets([2, 3], 4, seed=1))
    base = ["loss_ce", "loss_bbox", "loss_giou", "cardinality_error"]
    expected = {k + s for k in base for s in ("", "_0", "_1", "_enc")} | {"class_error"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    assert set(criterion.weight_dict) == {k for k in expected if k.startswith("loss_")}
    total = criterion.total_loss(losses)
    assert torch.isclose(total, sum(losses[k] * w for k, w in criterion.weight_dict.items()))


def test_num_boxes_is_targets_times_groups() -> None:
    outputs, targets = _outputs(2, 3 * 4, 5, seed=2, aux=0, enc=False), _targets([2, 1], 5, seed=3)
    criterion = build_criterion(dec_layers=1, two_stage=False, group_detr=3).train()
    losses = criterion(outputs, targets)
    indices = criterion.matcher(outputs, targets, group_detr=3)
    l1 = sum((outputs["pred_boxes"][i, q] - targets[i]["boxes"][t]).abs().sum() for i, (q, t) in enumerate(indices))
    torch.testing.assert_close(losses["loss_bbox"], l1 / (3 * 3))


def test_eval_mode_uses_one_group() -> None:
    """In eval mode the model returns group 0 only (Q queries) and the criterion matches/normalises accordingly."""
    criterion = build_criterion(dec_layers=1, two_stage=False, group_detr=13).eval()
    outputs, targets = _outputs(1, 6, 3, seed=4, aux=0, enc=False), _targets([2], 3, seed=5)
    losses = criterion(outputs, targets)
    indices = criterion.matcher(outputs, targets, group_detr=1)
    q, t = indices[0]
    l1 = (outputs["pred_boxes"][0, q] - targets[0]["boxes"][t]).abs().sum() / 2
    torch.testing.assert_close(losses["loss_bbox"], l1)


def test_empty_targets_give_all_negative_loss() -> None:
    outputs = _outputs(2, 2 * 4, 3, seed=6)
    for key in ("pred_logits", "pred_boxes"):
        outputs[key].requires_grad_(True)
    criterion = build_criterion(dec_layers=2, group_detr=2).train()
    losses = criterion(outputs, _targets([0, 0], 3, seed=7))
    x = outputs["pred_logits"].detach()
    negatives = (x.sigmoid() ** 2 * F.softplus(x)).sum()  # -p^2 log(1 - p) everywhere, num_boxes clamped to 1
    torch.testing.assert_close(losses["loss_ce"], negatives)
    assert losses["loss_bbox"].item() == losses["loss_giou"].item() == 0.0
    assert losses["class_error"].item() == 100.0
    criterion.total_loss(losses).backward()
    assert outputs["pred_logits"].grad is not None and torch.isfinite(outputs["pred_logits"].grad).all()


def test_perfect_predictions_give_zero_box_losses() -> None:
    groups, queries, classes = 3, 5, 4
    targets = _targets([3], classes, seed=8)
    logits = torch.full((1, groups * queries, classes), -8.0)
    boxes = torch.tensor([[0.1, 0.1, 0.05, 0.05]]).repeat(1, groups * queries, 1)
    for g in range(groups):
        rows = torch.arange(3) + g * queries + 1  # not the first rows: matching must find them
        logits[0, rows, targets[0]["labels"]] = 8.0
        boxes[0, rows] = targets[0]["boxes"]
    criterion = build_criterion(dec_layers=1, two_stage=False, group_detr=groups).train()
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert losses["loss_bbox"].item() < 1e-6
    assert losses["loss_giou"].item() < 1e-6
    assert losses["class_error"].item() == 0.0


def test_crowd_targets_are_ignored() -> None:
    outputs, targets = _outputs(2, 2 * 4, 3, seed=9), _targets([2, 1], 3, seed=10)
    with_crowd = [dict(t) for t in targets]
    with_crowd[0] = {
        "labels": torch.cat([targets[0]["labels"], torch.tensor([1])]),
        "boxes": torch.cat([targets[0]["boxes"], torch.tensor([[0.5, 0.5, 0.3, 0.3]])]),
        "iscrowd": torch.tensor([0, 0, 1]),
        "orig_size": torch.tensor([64, 64]),  # not per-instance: must survive untouched
    }
    criterion = build_criterion(dec_layers=2, group_detr=2).train()
    plain, crowd = criterion(outputs, targets), criterion(outputs, with_crowd)
    assert plain.keys() == crowd.keys()
    for key in plain:
        torch.testing.assert_close(crowd[key], plain[key])


def test_ia_bce_matches_the_textbook_formula() -> None:
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 6, 3, generator=g)
    batch_idx, query_idx, labels = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 5]), torch.tensor([1, 0, 2])
    iou = torch.tensor([0.7, 0.2, 0.0])
    p = logits.sigmoid()
    t = (p[batch_idx, query_idx, labels] ** 0.25 * iou**0.75).clamp(min=0.01)
    pos_w, neg_w = torch.zeros_like(p), p**2
    pos_w[batch_idx, query_idx, labels] = t
    neg_w[batch_idx, query_idx, labels] = 1 - t
    expected = -(pos_w * p.log() + neg_w * (1 - p).log()).sum() / 4.0
    torch.testing.assert_close(ia_bce_loss(logits, batch_idx, query_idx, labels, iou, 4.0), expected)


def test_focal_variant_is_chosen_at_construction() -> None:
    outputs, targets = _outputs(1, 4, 3, seed=12, aux=0, enc=False), _targets([1], 3, seed=13)
    criterion = build_criterion(dec_layers=1, two_stage=False, group_detr=1, ia_bce_loss=False).train()
    losses = criterion(outputs, targets)
    ((q, t),) = criterion.matcher(outputs, targets)
    onehot = torch.zeros_like(outputs["pred_logits"])
    onehot[0, q, targets[0]["labels"][t]] = 1.0
    torch.testing.assert_close(losses["loss_ce"], sigmoid_focal_loss(outputs["pred_logits"], onehot).sum())
    with pytest.raises(ValueError, match="unknown losses"):
        type(criterion)(criterion.matcher, {}, losses=("labels", "keypoints"))


def test_num_boxes_all_reduced_when_distributed(tmp_path: Path) -> None:
    outputs, targets = _outputs(1, 2 * 4, 3, seed=14), _targets([2], 3, seed=15)
    criterion = build_criterion(dec_layers=2, group_detr=2).train()
    local = criterion(outputs, targets)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reduced = criterion(outputs, targets)
    finally:
        dist.destroy_process_group()
    for key in local:
        torch.testing.assert_close(reduced[key], local[key])


# -------------------------------------------------------------------------------------------------- masks


def _seg_case(seed: int) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    batch, queries, channels, size = 2, 2 * 3, 4, 8
    spatial = torch.randn(batch, channels, size, size, generator=g)
    query = torch.randn(batch, queries, channels, generator=g)
    outputs = {
        "pred_logits": torch.randn(batch, queries, 3, generator=g),
        "pred_boxes": torch.rand(batch, queries, 4, generator=g) * 0.4 + 0.3,
        "spatial_features": spatial,
        "query_features": query,
        "bias": torch.zeros(1),
    }
    targets = _targets([2, 1], 3, seed=seed + 1)
    for t in targets:
        t["masks"] = torch.rand(len(t["labels"]), 24, 20, generator=g) > 0.5
    return outputs, targets


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_mask_loss_gradients_reach_only_mask_logits(dense: bool) -> None:
    raw, targets = _seg_case(seed=20)
    leaves = {k: v.clone().requires_grad_(True) for k, v in raw.items()}
    if dense:
        pred_masks = torch.einsum("bqc,bchw->bqhw", leaves["query_features"], leaves["spatial_features"])
        pred_masks = pred_masks + leaves["bias"]
    else:
        pred_masks = SparseMaskLogits(leaves["spatial_features"], leaves["query_features"], leaves["bias"])
    outputs = {"pred_logits": leaves["pred_logits"], "pred_boxes": leaves["pred_boxes"], "pred_masks": pred_masks}
    criterion = build_criterion(dec_layers=1, two_stage=False, group_detr=2, segmentation=True).train()
    losses = criterion(outputs, targets)
    assert {"loss_mask_ce", "loss_mask_dice"} <= losses.keys()
    assert {"loss_mask_ce", "loss_mask_dice"} <= criterion.weight_dict.keys()
    (losses["loss_mask_ce"] + losses["loss_mask_dice"]).backward()
    assert leaves["pred_logits"].grad is None and leaves["pred_boxes"].grad is None
    for key in ("spatial_features", "query_features", "bias"):
        assert leaves[key].grad is not None and leaves[key].grad.abs().sum() > 0


def test_dense_and_sparse_masks_give_equal_losses() -> None:
    raw, targets = _seg_case(seed=30)
    sparse = {k: raw[k] for k in ("spatial_features", "query_features", "bias")}
    dense = torch.einsum("bqc,bchw->bqhw", raw["query_features"], raw["spatial_features"]) + raw["bias"]
    criterion = build_criterion(dec_layers=1, two_stage=False, group_detr=2, segmentation=True).train()
    results = []
    for pred_masks in (sparse, dense):
        torch.manual_seed(0)
        results.append(criterion({**raw, "pred_masks": pred_masks}, targets))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


def test_mask_losses_without_targets_are_zero_and_connected() -> None:
    raw, _ = _seg_case(seed=40)
    spatial = raw["spatial_features"].requires_grad_(True)
    outputs = {**raw, "pred_masks": SparseMaskLogits(spatial, raw["query_features"], raw["bias"])}
    criterion = build_criterion(dec_layers=1, two_stage=False, group_detr=2, segmentation=True).train()
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 8, 8)}]
    losses = criterion(
        {k: v[:1] if torch.is_tensor(v) and k.startswith("pred") else v for k, v in outputs.items()}, empty
    )
    assert losses["loss_mask_ce"].item() == losses["loss_mask_dice"].item() == 0.0
    (losses["loss_mask_ce"] + losses["loss_mask_dice"]).backward()
    assert spatial.grad is not None  # DDP needs every mask-head parameter in the graph


def test_good_masks_score_better_than_bad_ones() -> None:
    """A prediction equal to its target (a rectangle, +-10 logits) scores far better than its negation."""
    target = torch.zeros(1, 24, 20, dtype=torch.bool)
    target[:, 6:18, 4:12] = True
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.4, 0.5, 0.4, 0.5]]), "masks": target}]
    outputs = {"pred_logits": torch.zeros(1, 1, 2), "pred_boxes": torch.tensor([[[0.4, 0.5, 0.4, 0.5]]])}
    logits = target.float()[None] * 20 - 10  # [1, 1, 24, 20]
    criterion = build_criterion(dec_layers=1, two_stage=False, group_detr=1, segmentation=True).train()
    good = criterion({**outputs, "pred_masks": logits}, targets)
    bad = criterion({**outputs, "pred_masks": -logits}, targets)
    assert good["loss_mask_ce"] < 0.1 * bad["loss_mask_ce"]
    assert good["loss_mask_dice"] < 0.1 < 0.9 < bad["loss_mask_dice"]
