"""What a dataset check reports per split (shared by the COCO and YOLO checkers of ``validate_setup.py``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

REQUIRED_SPLITS: tuple[str, ...] = ("train", "valid")
OPTIONAL_SPLITS: tuple[str, ...] = ("test",)


@dataclass
class SplitSummary:
    """What one split holds, for the final summary."""

    images: int = 0
    annotations: int = 0
    images_without_annotations: int = 0
    crowd: int = 0
    # Boxes that poke out of their image by at most BBOX_TOLERANCE_PX: training clips them (the same rule,
    # rfdetr.data.annotations.clip_box) and counts them; the largest such overshoot in pixels.
    clipped: int = 0
    max_clip_px: float = 0.0
    per_class: Counter = field(default_factory=Counter)
    mask_kinds: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
