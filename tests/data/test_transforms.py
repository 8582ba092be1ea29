"""Transforms: scale lists, masks and boxes moving together through flip / crop / resize, degenerate boxes dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from rfdetr.data.coco import CocoDetection, finalize_sample
from rfdetr.data.transforms import (
    RandomSizeCrop,
    eval_transforms,
    max_train_size,
    multi_scale_sizes,
    recipe_scale,
    resize_batch,
    train_transforms,
)


@pytest.mark.parametrize(("resolution", "divisor", "expanded", "expected"), [
    (384, 32, True, list(range(224, 545, 32))),  # Nano
    (384, 32, False, list(range(288, 513, 32))),
    (700, 20, True, list(range(600, 801, 20))),  # XLarge
    (560, 56, True, list(range(280, 841, 56))),  # Base
    (312, 12, True, list(range(252, 373, 12))),  # Seg-Nano
    (312, 12, False, list(range(276, 361, 12))),
    (432, 24, True, list(range(312, 553, 24))),  # Seg-Medium
    (64, 32, False, [64, 96, 128, 160, 192]),  # sizes below 2 blocks are left out
])
def test_multi_scale_sizes_match_the_spec_table(resolution: int, divisor: int, expanded: bool,
                                                expected: list[int]) -> None:
    assert multi_scale_sizes(resolution, divisor, expanded) == expected
    assert max_train_size(resolution, divisor, multi_scale=True, expanded=expanded) == expected[-1]
    assert max_train_size(resolution, divisor) == resolution


def test_recipe_scale_only_below_384() -> None:
    assert recipe_scale(384) == recipe_scale(544) == 1.0
    assert recipe_scale(64) == pytest.approx(1 / 6)
    crops = [t for t in _walk(train_transforms(64)) if isinstance(t, RandomSizeCrop)]
    assert [(c.min_size, c.max_size) for c in crops] == [(64, 100)]
    crops = [t for t in _walk(train_transforms(384, multi_scale=True)) if isinstance(t, RandomSizeCrop)]
    assert [(c.min_size, c.max_size) for c in crops] == [(384, 600)]


def _walk(transform: v2.Transform):
    yield transform
    for child in getattr(transform, "transforms", []):
        yield from _walk(child)


def _exact_sample(dataset: CocoDetection, index: int) -> tuple[tv_tensors.Image, dict]:
    """A dataset sample whose boxes are recomputed from its masks, so that any later mismatch is the transform's."""
    image, target = dataset.load_sample(index)
    boxes = torch.stack([_mask_box(m) for m in target["masks"]])
    target["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:]))
    return image, target


def _mask_box(mask: torch.Tensor) -> torch.Tensor:
    """Exclusive pixel box [x0, y0, x1, y1] of a bool mask [H, W]."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _assert_aligned(image: torch.Tensor, target: dict, tol: float) -> int:
    """Every mask lies inside its box, and fills it (within ``tol`` px) unless the box was cut at the image border.

    A cut object's box is the old box clipped to the crop window, which can be wider than the visible part of a
    slanted shape (upstream behaves the same), so only containment holds there. Returns the number of exact checks.
    """
    masks, boxes = target["masks"], target["boxes"].as_subclass(torch.Tensor)
    height, width = image.shape[-2:]
    assert masks.shape == (len(boxes), height, width) and len(target["labels"]) == len(boxes)
    exact = 0
    for mask, box in zip(masks, boxes, strict=True):
        if mask.sum() < 4:  # a sliver at a crop edge: its box is a sliver as well
            assert (box[2:] - box[:2]).min() < tol + 2
            continue
        mask_box = _mask_box(mask)
        assert (mask_box[:2] >= box[:2] - tol).all() and (mask_box[2:] <= box[2:] + tol).all(), \
            f"mask box {mask_box.tolist()} not inside box {box.tolist()}"
        if box[0] > tol and box[1] > tol and box[2] < width - tol and box[3] < height - tol:
            err = (mask_box - box).abs().max().item()
            assert err <= tol, f"mask box {mask_box.tolist()} vs box {box.tolist()}"
            exact += 1
    return exact


@pytest.fixture(scope="module")
def synthetic_masks(synthetic_dir: Path) -> CocoDetection:
    return CocoDetection(synthetic_dir, "train", masks=True)


@pytest.mark.parametrize("name", ["flip", "crop", "short_side", "square", "train_64", "train_384_multiscale"])
def test_masks_stay_aligned_with_boxes(synthetic_masks: CocoDetection, name: str) -> None:
    transform, tol = {
        "flip": (v2.RandomHorizontalFlip(p=1.0), 0.0),
        "crop": (RandomSizeCrop(80, 120), 0.0),
        # Nearest-neighbour mask resizing vs exact box scaling: up to ~1 output pixel per resize.
        "short_side": (v2.RandomShortestSize([200, 300]), 1.5),
        "square": (v2.Resize((64, 64)), 1.5),
        "train_64": (train_transforms(64), 2.5),
        "train_384_multiscale": (train_transforms(384, multi_scale=True, expanded_scales=True), 2.5),
    }[name]
    torch.manual_seed(0)
    compared = 0
    images = 6 if name == "train_384_multiscale" else 16  # full-scale recipe: 600-px intermediates, keep it short
    for index in range(images):
        image, target = _exact_sample(synthetic_masks, index)
        out_image, out_target = transform(image, target)
        compared += _assert_aligned(out_image, out_target, tol)
    assert compared >= 4  # enough objects were not cut by a crop to check exact agreement


def test_flip_mirrors_box_and_mask(synthetic_masks: CocoDetection) -> None:
    image, target = _exact_sample(synthetic_masks, 0)
    out_image, out = v2.RandomHorizontalFlip(p=1.0)(image, target)
    width = image.shape[-1]
    box, flipped = target["boxes"][0], out["boxes"][0]
    assert torch.equal(flipped, torch.stack([width - box[2], box[1], width - box[0], box[3]]))
    assert torch.equal(out["masks"], target["masks"].flip(-1)) and torch.equal(out_image, image.flip(-1))


def _toy_sample() -> tuple[tv_tensors.Image, dict]:
    """A 100x100 image with three objects: a normal one, a one-pixel-wide sliver, and one in the bottom-right corner."""
    masks = torch.zeros(3, 100, 100, dtype=torch.bool)
    masks[0, 10:40, 10:50] = True
    masks[1, 60:90, 20:20] = True  # zero-width: degenerate from the start
    masks[2, 85:100, 85:100] = True
    boxes = torch.tensor([[10, 10, 50, 40], [20, 60, 20, 90], [85, 85, 100, 100]], dtype=torch.float32)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(100, 100)),
        "masks": tv_tensors.Mask(masks),
        "labels": torch.tensor([0, 1, 2]),
        "iscrowd": torch.zeros(3, dtype=torch.int64),
        "area": torch.tensor([1200.0, 0.0, 225.0]),
        "image_id": torch.tensor(7),
    }
    return tv_tensors.Image(torch.randint(0, 256, (3, 100, 100), dtype=torch.uint8)), target


def test_degenerate_boxes_dropped_with_their_masks() -> None:
    transform = [t for t in train_transforms(64).transforms if isinstance(t, v2.SanitizeBoundingBoxes)][0]
    image, target = _toy_sample()
    # Crop the top-left 60x60: object 2 is cut away entirely (its box clamps to zero size), object 1 was degenerate.
    image, target = v2.functional.crop(image, 0, 0, 60, 60), {
        **target,
        "boxes": v2.functional.crop(target["boxes"], 0, 0, 60, 60),
        "masks": v2.functional.crop(target["masks"], 0, 0, 60, 60),
    }
    _, out = transform(image, target)
    assert out["labels"].tolist() == [0]
    assert out["masks"].shape == (1, 60, 60) and out["masks"][0].sum() == 1200
    assert out["iscrowd"].shape == (1,) and out["area"].tolist() == [1200.0]
    assert out["boxes"].tolist() == [[10.0, 10.0, 50.0, 40.0]] and out["image_id"] == 7


def test_train_and_eval_outputs(synthetic_masks: CocoDetection) -> None:
    torch.manual_seed(0)
    image, target = synthetic_masks.load_sample(0)
    for transform, size in ((train_transforms(64), 64), (eval_transforms(96), 96)):
        out_image, out_target = finalize_sample(*transform(image, dict(target)))
        assert out_image.shape == (3, size, size) and out_image.dtype == torch.float32
        assert type(out_image) is torch.Tensor and type(out_target["boxes"]) is torch.Tensor
        assert out_image.min() < -1 and out_image.max() > 1  # ImageNet-normalised
        assert out_target["size"].tolist() == [size, size] and out_target["orig_size"].tolist() == [128, 160]
        assert out_target["masks"].dtype == torch.bool and out_target["masks"].shape[-2:] == (size, size)
        assert ((out_target["boxes"] >= 0) & (out_target["boxes"] <= 1)).all()
    # Eval keeps every box and only rescales it: normalised boxes are the same before and after.
    _, plain = finalize_sample(image, dict(target))
    _, resized = finalize_sample(*eval_transforms(96)(image, dict(target)))
    assert torch.allclose(plain["boxes"], resized["boxes"], atol=1e-6)


def test_train_transforms_cover_both_branches() -> None:
    """Over many draws the output is always S_max square, and both the plain-resize and the crop branch occur."""
    torch.manual_seed(0)
    image, target = _toy_sample()
    transform = train_transforms(64)
    kept_all = cropped = 0
    for _ in range(40):
        out_image, out = transform(image, dict(target))
        assert out_image.shape == (3, 64, 64)
        kept_all += len(out["labels"]) == 2
        cropped += len(out["labels"]) < 2
    assert kept_all > 0 and cropped > 0


def test_resize_batch(synthetic_masks: CocoDetection) -> None:
    samples = [finalize_sample(*train_transforms(64)(*_exact_sample(synthetic_masks, i))) for i in range(3)]
    images = torch.stack([s[0] for s in samples])
    targets = [s[1] for s in samples]
    targets[1] = {**targets[1], **{k: targets[1][k][:0] for k in ("masks", "boxes", "labels")}}
    new_images, new_targets = resize_batch(images, targets, 96)
    assert new_images.shape == (3, 3, 96, 96) and images.shape == (3, 3, 64, 64)
    for old, new in zip(targets, new_targets, strict=True):
        assert new["size"].tolist() == [96, 96] and old["size"].tolist() == [64, 64]
        assert torch.equal(new["boxes"], old["boxes"])  # normalised: unchanged
        assert new["masks"].shape == (len(old["masks"]), 96, 96) and new["masks"].dtype == torch.bool
        pixel_boxes = new["boxes"].clone()
        pixel_boxes[:, :2] -= pixel_boxes[:, 2:] / 2
        pixel_boxes[:, 2:] += pixel_boxes[:, :2]
        _assert_aligned(new_images[0], {**new, "boxes": pixel_boxes * 96}, tol=4.0)
    same_images, same_targets = resize_batch(images, targets, 64)
    assert same_images is images and same_targets is targets
