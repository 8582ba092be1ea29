"""Locations of the shared rfdetr reference files (``<repo>/../shared/refs``) and a skip helper."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import REFS, SHARED, shared_path

NANO_CKPT = REFS / "rf-detr-nano-perturbed-random.legacy.pth"
NANO_IO = REFS / "rf-detr-nano-perturbed-io.pt"
NANO_TRAIN = REFS / "rf-detr-nano-perturbed-loss.pt"
NANO_JSON = REFS / "rf-detr-nano-perturbed.json"

# Buffer that rfdetr >= 1.7 registers but released checkpoints lack (spec 12.3); we never register it.
KP_MASK_KEY = "_kp_active_mask"


def require(path: Path) -> Path:
    """Skip the calling test when a shared reference file is absent (:func:`tests.helpers.shared_path`)."""
    return shared_path(path.relative_to(SHARED))
