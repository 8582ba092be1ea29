"""Hungarian matching and the set criterion (spec section 4)."""

from rfdetr.losses.criterion import SetCriterion, build_criterion
from rfdetr.losses.mask_logits import DenseMaskLogits, MaskLogits, SparseMaskLogits
from rfdetr.losses.matcher import HungarianMatcher, build_matcher

__all__ = [
    "DenseMaskLogits",
    "HungarianMatcher",
    "MaskLogits",
    "SetCriterion",
    "SparseMaskLogits",
    "build_criterion",
    "build_matcher",
]
