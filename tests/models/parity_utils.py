"""Comparison helpers that tolerate the near-tie swaps described in spec trap 15.7.

Two two-stage proposals whose scores differ by ~1e-6 can come out of ``topk`` in either order under float noise.
The order pairs proposal i with learned query i, so a swap changes those two queries' outputs completely (and, via
self-attention, the rest of their group slightly). The helpers detect such swaps, check that the swapped proposals
really are tied, replay our forward with the reference order, and then require the usual tight tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rfdetr.models import RFDETRModel

# Adjacent two-stage scores closer than this are treated as ties whose order float noise may flip.
TIE_GAP = 1e-5


def flatten_outputs(outputs: dict) -> dict[str, torch.Tensor]:
    """{'aux_outputs': [{'pred_logits': t}]} -> {'aux_outputs.0.pred_logits': t}, like the reference files."""
    flat: dict[str, torch.Tensor] = {}

    def visit(value: object, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(item, f"{prefix}{index}.")
        elif torch.is_tensor(value):
            flat[prefix[:-1]] = value

    visit(outputs, "")
    return flat


def max_diffs(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs difference for every reference key."""
    return {key: (ours[key].float() - value.float()).abs().max().item() for key, value in ref.items()}


def find_swaps(
    outputs: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], num_queries: int, atol: float
) -> dict[tuple[int, int], list[int]]:
    """Per (image, group): ranks r such that queries r and r+1 look swapped relative to the reference.

    A swap shows up as two adjacent queries whose final boxes disagree (other queries only move slightly).
    Asserts that each such pair is a genuine near-tie of our two-stage scores.
    """
    box_bad = (outputs["pred_boxes"] - ref["pred_boxes"]).abs().amax(-1) > atol  # [B, N]
    scores = outputs["enc_outputs.pred_logits"].amax(-1)  # [B, N], descending within each group
    swaps: dict[tuple[int, int], list[int]] = {}
    for b, n in box_bad.nonzero().tolist():
        group, rank = divmod(n, num_queries)
        ranks = swaps.setdefault((b, group), [])
        if ranks and ranks[-1] + 1 == rank:
            continue  # second member of the pair already recorded
        assert rank + 1 < num_queries and box_bad[b, n + 1], f"mismatch at query {n} is not an adjacent swap"
        gap = (scores[b, n] - scores[b, n + 1]).item()
        assert gap < TIE_GAP, f"queries {n},{n + 1} differ but their two-stage scores are {gap:.2e} apart"
        ranks.append(rank)
    return swaps


def forward_with_swaps(
    model: RFDETRModel, pixels: torch.Tensor, swaps: dict[tuple[int, int], list[int]], flat: bool = True
) -> dict:
    """Forward pass where the listed adjacent two-stage ranks are exchanged (replaying the reference order).

    Returns the outputs flattened like the reference files, or as the model's nested dict when ``flat`` is False.
    """
    transformer = model.transformer
    original: Callable = transformer.select_proposals

    def patched(memory: torch.Tensor, proposals: torch.Tensor, group: int) -> tuple[torch.Tensor, ...]:
        selected = [t.clone() for t in original(memory, proposals, group)]
        for (b, g), ranks in swaps.items():
            if g != group:
                continue
            for rank in ranks:
                for t in selected:
                    t[b, [rank, rank + 1]] = t[b, [rank + 1, rank]]
        return tuple(selected)

    transformer.select_proposals = patched
    try:
        outputs = model(pixels)
        return flatten_outputs(outputs) if flat else outputs
    finally:
        del transformer.select_proposals


def compare_tie_aware(
    model: RFDETRModel,
    pixels: torch.Tensor,
    ref: dict[str, torch.Tensor],
    num_queries: int,
    atol: float = 1e-4,
    outputs: dict | None = None,
) -> tuple[dict[str, float], dict[tuple[int, int], list[int]]]:
    """Max abs diffs of ``model(pixels)`` vs ``ref`` after replaying any near-tie swaps; also returns the swaps.

    ``outputs`` may hold an already computed ``model(pixels)`` to save a forward pass.
    """
    with torch.no_grad():
        ours = flatten_outputs(outputs if outputs is not None else model(pixels))
        diffs = max_diffs(ours, ref)
        if max(diffs.values()) <= atol or "enc_outputs.pred_logits" not in ours:
            return diffs, {}
        swaps = find_swaps(ours, ref, num_queries, atol)
        return max_diffs(forward_with_swaps(model, pixels, swaps), ref), swaps


def match_detections_up_to_ties(
    ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], score_tol: float = 1e-5, box_tol: float = 1e-3
) -> None:
    """Post-processed top-k equality where runs of (near-)equal scores may come in any order.

    Every detection must have the reference's score (to ``score_tol``) at its rank; within a run of tied scores the
    (label, box) pairs are compared as sets.

    ``score_tol`` 1e-5: scores are sigmoid(logit), the logits within the parity bound 1e-4 (test_parity.ATOL); the
    nano reference's 300 scores are <= 0.113, where sigmoid's slope p(1-p) is <= 0.1, so 1e-4 x 0.1. Measured against
    the reference (made on another host) here: 1.9e-7 (Zen 4). ``box_tol`` 1e-3 px: 16 float32 ulps of a 640 px
    coordinate; measured 6.1e-5 px (one ulp) on the detections with separated scores, Zen 4.
    """
    assert ours["scores"].shape == ref["scores"].shape
    torch.testing.assert_close(ours["scores"], ref["scores"], atol=score_tol, rtol=0)
    scores = ref["scores"]
    start = 0
    while start < len(scores):
        end = start + 1
        while end < len(scores) and (scores[end - 1] - scores[end]).abs() < score_tol:
            end += 1
        ref_items = list(zip(ref["labels"][start:end].tolist(), ref["boxes"][start:end], strict=True))
        for label, box in zip(ours["labels"][start:end].tolist(), ours["boxes"][start:end], strict=True):
            hit = next(
                (i for i, (lb, bx) in enumerate(ref_items) if lb == label and (bx - box).abs().max() <= box_tol), None
            )
            assert hit is not None, f"detection (label {label}, box {box.tolist()}) at ranks {start}..{end - 1}"
            ref_items.pop(hit)
        start = end
