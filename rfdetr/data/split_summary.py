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

    def size_text(self, most: int = 5) -> str:
        """The commonest image sizes with their counts: ``640x640 (120), 640x480 (3), ... 7 sizes in all``."""
        text = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.sizes.most_common(most))
        return text + (f", ... {len(self.sizes)} sizes in all" if len(self.sizes) > most else "")

    def print_details(self) -> None:
        """The per-class, mask-kind and image-size lines of the dataset summary."""
        print(f"         per class: {dict(sorted(self.per_class.items()))}")
        print(f"         masks: {dict(self.mask_kinds)}")
        print(f"         image sizes: {self.size_text()}")
