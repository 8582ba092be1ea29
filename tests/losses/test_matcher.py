"""Group-wise Hungarian matcher: reference indices and invariants."""

from __future__ import annotations

import pytest
import torch

from rfdetr.losses import HungarianMatcher, SparseMaskLogits, build_matcher
from tests.helpers import shared_path

LOSS_REF = ("refs", "rf-detr-nano-perturbed-loss.pt")


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(shared_path(*LOSS_REF), weights_only=True)  # plain tensors/dicts/lists: no allow-listing needed


def _outputs(batch: int, groups: int, queries: int, classes: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pred_logits": torch.randn(batch, groups * queries, classes, generator=g) - 2.0,
        "pred_boxes": torch.rand(batch, groups * queries, 4, generator=g) * 0.5 + 0.2,
    }


def _targets(sizes: list[int], classes: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "labels": torch.randint(0, classes, (n,), generator=g),
            "boxes": torch.rand(n, 4, generator=g) * 0.4 + 0.3,
        }
        for n in sizes
    ]


def _check_groups(
    indices: list[tuple[torch.Tensor, torch.Tensor]], sizes: list[int], groups: int, queries: int
) -> None:
    """Each group matches min(Q, T) distinct queries of its own range to distinct targets, in sorted order."""
    for (query_idx, target_idx), size in zip(indices, sizes, strict=True):
        per_group = min(queries, size)
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert len(query_idx) == len(target_idx) == groups * per_group
        for g in range(groups):
            q = query_idx[g * per_group : (g + 1) * per_group]
            t = target_idx[g * per_group : (g + 1) * per_group]
            assert ((q >= g * queries) & (q < (g + 1) * queries)).all()
            assert torch.equal(q, q.sort().values)
            assert len(set(t.tolist())) == per_group  # no target twice within a group
            if size <= queries:
                assert sorted(t.tolist()) == list(range(size))  # every target exactly once per group


def test_reference_indices(reference: dict) -> None:
    """Final-layer matches of the 13-group reference forward, exactly."""
    indices = build_matcher()(reference["train_outputs"], reference["targets"], group_detr=13)
    assert len(indices) == len(reference["indices_last"])
    for (q, t), (ref_q, ref_t) in zip(indices, reference["indices_last"], strict=True):
        assert torch.equal(q, ref_q)
        assert torch.equal(t, ref_t)
    _check_groups(indices, [3, 3], groups=13, queries=300)


def test_batched_equals_per_image() -> None:
    sizes = [3, 0, 5, 1]
    outputs, targets = _outputs(4, 3, 7, 6, seed=0), _targets(sizes, 6, seed=1)
    matcher = build_matcher()
    batched = matcher(outputs, targets, group_detr=3)
    for i, target in enumerate(targets):
        single = matcher({k: v[i : i + 1] for k, v in outputs.items()}, [target], group_detr=3)[0]
        assert torch.equal(batched[i][0], single[0])
        assert torch.equal(batched[i][1], single[1])
    _check_groups(batched, sizes, groups=3, queries=7)


def test_more_targets_than_queries() -> None:
    sizes = [6, 2]
    indices = build_matcher()(_outputs(2, 2, 4, 3, seed=2), _targets(sizes, 3, seed=3), group_detr=2)
    _check_groups(indices, sizes, groups=2, queries=4)


def test_empty_targets() -> None:
    matcher = build_matcher()
    outputs = _outputs(2, 2, 5, 3, seed=4)
    for indices in (matcher(outputs, _targets([0, 0], 3, seed=5), group_detr=2), matcher(outputs, [], group_detr=2)):
        for q, t in indices:
            assert q.numel() == t.numel() == 0 and q.dtype == torch.int64


def test_groups_must_divide_queries() -> None:
    with pytest.raises(ValueError, match="groups"):
        build_matcher()(_outputs(1, 1, 7, 3, seed=6), _targets([1], 3, seed=7), group_detr=2)


def test_cost_weights_are_used() -> None:
    """Query 0 has the right class and a wrong box, query 1 the reverse: the weights decide."""
    logits = torch.tensor([[[5.0, -5.0], [-5.0, 5.0]]])
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.2]])}]
    outputs = {"pred_logits": logits, "pred_boxes": boxes}
    by_class = HungarianMatcher(cost_class=1.0, cost_bbox=0.0, cost_giou=0.0)(outputs, targets)
    by_box = HungarianMatcher(cost_class=0.0, cost_bbox=1.0, cost_giou=0.0)(outputs, targets)
    by_giou = HungarianMatcher(cost_class=0.0, cost_bbox=0.0, cost_giou=1.0)(outputs, targets)
    assert by_class[0][0].tolist() == [0]
    assert by_box[0][0].tolist() == [1]
    assert by_giou[0][0].tolist() == [1]
    with pytest.raises(ValueError):
        HungarianMatcher(cost_class=0.0, cost_bbox=0.0, cost_giou=0.0)


def test_focal_parameters_are_used() -> None:
    """Query 0 is more confident (p=0.5 vs 0.018) but its box is off by L1 1.2; the class-cost gap is 1.05 with the
    defaults (box wins), 1.34 with gamma=0 and 1.94 with alpha=0.5 (class wins)."""
    logits = torch.tensor([[[0.0], [-4.0]]])
    boxes = torch.tensor([[[0.7, 0.7, 0.5, 0.5], [0.4, 0.4, 0.2, 0.2]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.2]])}]
    outputs = {"pred_logits": logits, "pred_boxes": boxes}

    def match(**kwargs: float) -> list[int]:
        return HungarianMatcher(cost_class=1.0, cost_bbox=1.0, cost_giou=0.0, **kwargs)(outputs, targets)[0][0].tolist()

    assert match() == [1]
    assert match(focal_gamma=0.0) == [0]
    assert match(focal_alpha=0.5) == [0]


def test_non_finite_costs_do_not_break_matching() -> None:
    outputs = _outputs(1, 2, 4, 3, seed=8)
    outputs["pred_boxes"][0, 1] = float("nan")
    outputs["pred_logits"][0, 5] = float("inf")
    indices = build_matcher()(outputs, _targets([2], 3, seed=9), group_detr=2)
    _check_groups(indices, [2], groups=2, queries=4)
    assert 1 not in indices[0][0].tolist()  # the NaN box is never worth choosing


def _mask_case() -> tuple[dict, list[dict]]:
    """Three identical queries except for their masks; only query 1's mask is the target's (the left half)."""
    height, width = 8, 8
    left = torch.zeros(height, width)
    left[:, : width // 2] = 1.0
    spatial = torch.stack([left, 1.0 - left]).unsqueeze(0) * 10.0  # [1, 2, 8, 8]: "left" and "right" channels
    query = torch.tensor([[[-1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]])  # [1, 3, 2]
    sparse = SparseMaskLogits(spatial, query, torch.zeros(1))
    outputs = {"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": torch.full((1, 3, 4), 0.5), "sparse": sparse}
    target_mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    target_mask[:, :, :16] = True  # higher resolution than the logits: sampling is in normalised coordinates
    targets = [{"labels": torch.tensor([1]), "boxes": torch.full((1, 4), 0.5), "masks": target_mask}]
    return outputs, targets


def test_mask_costs_decide_and_dense_equals_sparse() -> None:
    outputs, targets = _mask_case()
    sparse = outputs.pop("sparse")
    dense = torch.einsum("bqc,bchw->bqhw", sparse.query_features, sparse.spatial_features) + sparse.bias
    matcher = build_matcher(use_masks=True, mask_point_sample_ratio=1)
    results = []
    for pred_masks in (
        sparse,
        dense,
        {"spatial_features": sparse.spatial_features, "query_features": sparse.query_features, "bias": sparse.bias},
    ):
        torch.manual_seed(0)
        results.append(matcher({**outputs, "pred_masks": pred_masks}, targets))
    assert results[0][0][0].tolist() == [1]
    for other in results[1:]:
        assert torch.equal(other[0][0], results[0][0][0])
