"""Paired image / box / mask augmentation presets (``torchvision.transforms.v2``) and the multi-scale helpers.

The presets follow RF-DETR's square recipe (spec section 5.4). Train, per image:

1. horizontal flip with p = 0.5;
2. with p = 0.5 a square resize to ``S_max``; otherwise resize the short side to one of {400, 500, 600}, crop a
   random w x h window with w ~ U{384, min(W, 600)} and h ~ U{384, min(H, 600)}, and square-resize it to ``S_max``;
3. drop boxes that became degenerate (narrower than one pixel, e.g. cut away by the crop) with their labels, masks,
   ``iscrowd`` and ``area``;
4. float, ImageNet normalisation.

``S_max`` is the resolution, or the largest multi-scale size when multi-scale training is on; the training loop then
resizes each batch to a random size from :func:`multi_scale_sizes` with :func:`resize_batch`. Eval: a square resize
to the resolution and normalisation.

Small resolutions: the recipe's pixel sizes (400/500/600, 384..600) were chosen for ``S_max`` >= 384. Below that
every recipe size is multiplied by ``S_max / 384`` (:func:`recipe_scale`). The crop recipe is scale-invariant (the
crop window's fraction of the resized image is unchanged), so the distribution of crops is the same as upstream's;
only the wasted work of resizing to 600 px before shrinking to, say, 64 px goes away, which keeps tiny CPU
configurations fast. At ``S_max`` >= 384 (every released preset with multi-scale on) the numbers are upstream's.

Samples are ``(image, target)`` with ``image`` a ``tv_tensors.Image`` and ``target["boxes"]`` a
``tv_tensors.BoundingBoxes`` (XYXY, absolute), ``target["masks"]`` a ``tv_tensors.Mask`` [N, H, W]; every geometric
op moves all three together. :func:`rfdetr.data.coco.finalize_sample` then normalises the boxes to cxcywh.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD

RECIPE_SHORT_SIDES: tuple[int, ...] = (400, 500, 600)
RECIPE_CROP_MIN, RECIPE_CROP_MAX = 384, 600
# Below this S_max the recipe sizes are scaled down proportionally (see the module docstring).
RECIPE_FULL_SCALE = 384


def multi_scale_sizes(resolution: int, divisor: int, expanded: bool = False) -> list[int]:
    """Square training sizes around ``resolution`` (spec 2.8), ascending.

    ``divisor`` is patch_size x num_windows; sizes are ``(resolution // divisor + k) * divisor`` for k in -3..+4
    (8 sizes) or, with ``expanded``, -5..+5 (11 sizes), keeping only sizes >= 2 * divisor.
    E.g. (384, 32, expanded) -> 224, 256, ..., 544.
    """
    if resolution <= 0 or divisor <= 0:
        raise ValueError(f"resolution and divisor must be positive, got {resolution} and {divisor}")
    base = resolution // divisor
    offsets = range(-5, 6) if expanded else range(-3, 5)
    return [(base + k) * divisor for k in offsets if (base + k) * divisor >= 2 * divisor]


def max_train_size(resolution: int, divisor: int, multi_scale: bool = False, expanded: bool = False) -> int:
    """``S_max``: the size every training image is resized to by the dataset transform."""
    return max(multi_scale_sizes(resolution, divisor, expanded)) if multi_scale else resolution


def recipe_scale(size: int) -> float:
    """Factor applied to the crop recipe's pixel sizes for output size ``size``: ``min(1, size / 384)``."""
    return min(1.0, size / RECIPE_FULL_SCALE)


class RandomSizeCrop(v2.Transform):
    """Crop a random window: width ~ U{min_size, min(W, max_size)}, height likewise, uniform position.

    Boxes are shifted and clamped to the window (SanitizeBoundingBoxes later drops the ones cut away); masks are
    cropped with the image. A side smaller than ``min_size`` is kept whole.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        # torch's RNG, like every v2 transform, so DataLoader worker seeding makes it reproducible.
        crop_w = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()))
        crop_h = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.crop, inpt, **params)


def _sanitize_labels(sample: Any) -> tuple[torch.Tensor, ...]:
    """Per-box tensors that SanitizeBoundingBoxes must filter together with the boxes (masks are found by type)."""
    target = sample[1]
    return tuple(target[k] for k in ("labels", "iscrowd", "area") if k in target)


def _normalize() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))]


def train_transforms(resolution: int, multi_scale: bool = False, expanded_scales: bool = False, divisor: int = 32,
                     hflip_prob: float = 0.5) -> v2.Compose:
    """RF-DETR's square training augmentation to ``S_max`` x ``S_max`` (see the module docstring).

    Args:
        resolution: the model's nominal input size.
        multi_scale: resize to the largest multi-scale size instead of ``resolution`` (the batch is resized later).
        expanded_scales: use the 11-size list (-5..+5 blocks) instead of the 8-size one.
        divisor: patch_size x num_windows of the model (multi-scale sizes are multiples of it).
        hflip_prob: probability of the horizontal flip.

    Returns:
        A transform called as ``transforms(image, target)``; outputs a float image [3, S_max, S_max].
    """
    size = max_train_size(resolution, divisor, multi_scale, expanded_scales)
    f = recipe_scale(size)
    short_sides = [round(s * f) for s in RECIPE_SHORT_SIDES]
    crop = RandomSizeCrop(round(RECIPE_CROP_MIN * f), round(RECIPE_CROP_MAX * f))
    square = v2.Resize((size, size), antialias=True)
    return v2.Compose([
        v2.RandomHorizontalFlip(hflip_prob),
        v2.RandomChoice([square, v2.Compose([v2.RandomShortestSize(short_sides), crop, square])], p=[0.5, 0.5]),
        # min_size 1 px: a box narrower than a pixel of the network input carries no signal (and has no mask pixel).
        v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_sanitize_labels),
        *_normalize(),
    ])


def eval_transforms(resolution: int) -> v2.Compose:
    """Square resize to ``resolution`` (aspect ratio not kept, as upstream) and ImageNet normalisation.

    No box is dropped: validation targets keep every (clipped, non-empty) ground-truth box.
    """
    return v2.Compose([v2.Resize((resolution, resolution), antialias=True), *_normalize()])


def resize_batch(images: torch.Tensor, targets: list[dict[str, torch.Tensor]], size: int
                 ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Resize a whole batch to ``size`` x ``size`` for multi-scale training (one random size per step).

    Args:
        images: [B, 3, H, W] float, already normalised (bilinear resize commutes with the per-channel normalisation).
        targets: per-image dicts; ``boxes`` are normalised so they are unchanged; ``masks`` [N, H, W] bool are resized
            with nearest-exact (pixel-centre aligned, like bilinear) and ``size`` is updated.
        size: the new side.

    Returns:
        (images [B, 3, size, size], new target dicts; the inputs are not modified).
    """
    if tuple(images.shape[-2:]) == (size, size):
        return images, targets
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    out = []
    for target in targets:
        target = dict(target)
        target["size"] = torch.tensor([size, size], dtype=torch.int64, device=images.device)
        masks = target.get("masks")
        if masks is not None:
            if masks.shape[0]:
                masks = F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0] > 0.5
            else:
                masks = masks.new_zeros((0, size, size))
            target["masks"] = masks
        out.append(target)
    return images, out

