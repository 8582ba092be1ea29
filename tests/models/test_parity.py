"""Parity with rfdetr 1.11.2 reference outputs (shared/refs, nano with perturbed random weights)."""

from __future__ import annotations

import json

import pytest
import torch

from rfdetr.config import MODEL_PRESETS
from rfdetr.losses import build_criterion
from rfdetr.models import RFDETRModel, build_postprocessor
from tests.models.parity_utils import compare_tie_aware, forward_with_swaps, match_detections_up_to_ties
from tests.models.refs import KP_MASK_KEY, NANO_JSON, require

# Our float32 forward against rfdetr's reference outputs (../shared/refs, made on another host). Error model
# (tests/tolerances.py): float32 accumulation over K <= 1024 terms of O(10) magnitudes is within sqrt(K) * 2^-24 * 10
# ~ 2e-5 typically and K * 2^-24 * 10 ~ 6e-4 at worst; the trained nano weights do not amplify it the way random
# weights do. 1e-4 is ~5x the typical bound for two independent paths; near-tied proposals that the other host's
# rounding swapped are replayed in its order first (parity_utils.compare_tie_aware), then this bound applies.
ATOL = 1e-4
RAW_KEYS = (
    "pred_logits",
    "pred_boxes",
    "aux_outputs.0.pred_logits",
    "aux_outputs.0.pred_boxes",
    "enc_outputs.pred_logits",
    "enc_outputs.pred_boxes",
)


def test_nano_keys_and_shapes_match_reference(nano_state_dict: dict, nano_model: RFDETRModel) -> None:
    """Same key set, shapes and dtypes as the reference checkpoint and its JSON listing (minus _kp_active_mask)."""
    ours = nano_model.state_dict()
    assert KP_MASK_KEY not in ours
    assert list(ours) == list(nano_state_dict)  # even the order matches upstream's module tree
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in nano_state_dict.items()}
    listing = json.loads(require(NANO_JSON).read_text())["state_dict"]
    expected = {e["key"]: tuple(e["shape"]) for e in listing if e["key"] != KP_MASK_KEY}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    assert not any(name.endswith(("running_mean", "running_var", "num_batches_tracked")) for name in ours)


@pytest.mark.parametrize("name", ["random", "synthetic"])
def test_nano_eval_outputs_match_reference(
    nano_model: RFDETRModel, nano_io: dict, nano_eval_outputs: dict, name: str
) -> None:
    ref = {k: nano_io[f"{name}_outputs"][k] for k in RAW_KEYS}
    num_queries = MODEL_PRESETS["nano"].num_queries
    outputs = nano_eval_outputs[name]
    assert outputs["pred_logits"].shape == (1, num_queries, 91)
    diffs, swaps = compare_tie_aware(nano_model, nano_io[f"{name}_input"], ref, num_queries, outputs=outputs)
    assert max(diffs.values()) <= ATOL, (diffs, swaps)


@pytest.mark.parametrize(("name", "size"), [("random", (384, 384)), ("synthetic", (480, 640))])
def test_nano_postprocess_matches_reference(nano_io: dict, nano_eval_outputs: dict, name: str, size: tuple) -> None:
    """Top-300 scores/labels/boxes; rows with (near-)tied scores may come in either order (trap 15.7)."""
    result = build_postprocessor(MODEL_PRESETS["nano"])(nano_eval_outputs[name], torch.tensor([size]))[0]
    ref = nano_io[f"{name}_postprocess"]
    assert result["labels"].dtype == ref["labels"].dtype
    match_detections_up_to_ties(result, ref)


def test_nano_train_outputs_match_reference(nano_model: RFDETRModel, nano_train_ref: dict) -> None:
    """Train mode runs all 13 groups (group-major rows, block-diagonal self-attention) and matches upstream.

    The reference was made on another machine; near-tied two-stage proposals come out swapped in a couple of
    groups here (upstream itself, rerun on this machine, differs from the file in 5 groups), so swaps of tied
    neighbours are replayed before comparing.
    """
    ref = nano_train_ref["train_outputs"]
    nano_model.train()
    try:
        torch.manual_seed(777)
        diffs, swaps = compare_tie_aware(nano_model, nano_train_ref["batch"], ref, MODEL_PRESETS["nano"].num_queries)
    finally:
        nano_model.eval()
    assert max(diffs.values()) <= ATOL, (diffs, swaps)
    assert sum(len(r) for r in swaps.values()) <= 4, swaps  # ties are rare; many "swaps" would hide a real bug


def test_nano_export_graph_matches_reference(nano_model: RFDETRModel, nano_io: dict) -> None:
    """``random_forward_export``: the export graph's (boxes, logits), last layer and group 0 only."""
    with torch.no_grad():
        boxes, logits = nano_model.forward_export(nano_io["random_input"])
    ref_boxes, ref_logits = nano_io["random_forward_export"]
    assert (boxes - ref_boxes).abs().max() <= ATOL and (logits - ref_logits).abs().max() <= ATOL


def test_nano_train_losses_and_gradients_match_reference(nano_model: RFDETRModel, nano_train_ref: dict) -> None:
    """Our train-mode forward + criterion on the reference batch reproduce every ``loss_dict`` term, including the
    auxiliary (``_0``) and encoder (``_enc``) ones, the weighted total, and the per-parameter gradient norms.

    Near-tied proposals that come out swapped on this machine are replayed in the reference order first (as in the
    output-parity test above), since a swap pairs two proposals with each other's learned queries.
    """
    criterion = build_criterion(dec_layers=MODEL_PRESETS["nano"].dec_layers).train()
    num_queries = MODEL_PRESETS["nano"].num_queries
    nano_model.train()
    try:
        torch.manual_seed(777)
        _, swaps = compare_tie_aware(nano_model, nano_train_ref["batch"], nano_train_ref["train_outputs"], num_queries)
        torch.manual_seed(777)
        outputs = forward_with_swaps(nano_model, nano_train_ref["batch"], swaps, flat=False)
        torch.manual_seed(777)
        losses = criterion(outputs, nano_train_ref["targets"])
        total = criterion.total_loss(losses)
        total.backward()
        grads = {n: p.grad.norm().item() for n, p in nano_model.named_parameters() if p.grad is not None}
        without_grad = sorted(n for n, p in nano_model.named_parameters() if p.grad is None)
    finally:
        nano_model.zero_grad(set_to_none=True)
        nano_model.eval()

    expected = nano_train_ref["loss_dict"]
    assert set(losses) == set(expected)
    assert {k for k in expected if k.endswith("_0")} and {k for k in expected if k.endswith("_enc")}
    rel = {k: abs(losses[k].item() - float(v)) / max(abs(float(v)), 1e-12) for k, v in expected.items()}
    # Loss terms are sums over hundreds of matched pairs, each within ATOL-sized float32 rounding of the reference:
    # relative 1e-4 is the same error model as ATOL (relative ~2e-5 typical for O(1) terms), with margin.
    assert max(rel.values()) < 1e-4, rel
    assert abs(total.item() - float(nano_train_ref["loss"])) / float(nano_train_ref["loss"]) < 1e-4

    assert without_grad == sorted(nano_train_ref["params_without_grad"])
    ref_grads = nano_train_ref["grad_norms"]
    assert set(grads) == set(ref_grads)
    # Gradient norms sum over many terms: relative 1e-3 (absolute 1e-6 for the tiny ones) is float32 noise here.
    bad = {k: (grads[k], v) for k, v in ref_grads.items() if abs(grads[k] - v) > 1e-3 * abs(v) + 1e-6}
    assert not bad, f"{len(bad)} gradient norms differ: {dict(list(bad.items())[:5])}"
