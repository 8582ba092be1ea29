"""build_dataloader: tiny-set sampling with replacement, drop_last, sequential eval, reproducible from the seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler, Subset

from rfdetr.data.coco import CocoDetection
from rfdetr.data.loaders import build_dataloader, set_epoch
from rfdetr.data.transforms import eval_transforms, train_transforms


@pytest.fixture(scope="module")
def train_set(synthetic_dir: Path) -> CocoDetection:
    return CocoDetection(synthetic_dir, "train", transforms=train_transforms(64), masks=True)


def _ids(loader) -> list[list[int]]:
    return [[int(t["image_id"]) for t in targets] for _, targets in loader]


def test_tiny_train_set_is_drawn_with_replacement(train_set: CocoDetection) -> None:
    # 24 images < 5 x 4 x 2 = 40: five optimizer steps of 4 x 2 images per epoch, drawn with replacement.
    loader = build_dataloader(train_set, batch_size=4, train=True, workers=0, seed=0, grad_accum_steps=2)
    assert isinstance(loader.sampler, RandomSampler) and loader.sampler.replacement
    assert loader.sampler.num_samples == 40 and len(loader) == 10 and loader.drop_last


def test_train_loader_shuffles_and_drops_last(train_set: CocoDetection) -> None:
    subset = Subset(train_set, range(23))  # >= 5 x 4, so sampled without replacement
    loader = build_dataloader(subset, batch_size=4, train=True, workers=0, seed=0)
    assert isinstance(loader.sampler, RandomSampler) and not loader.sampler.replacement
    batches = _ids(loader)
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)  # 23 images: the last 3 are dropped
    assert len({i for b in batches for i in b}) == 20
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 64, 64) and isinstance(targets, list) and targets[0]["masks"].dtype == torch.bool
    set_epoch(loader, 1)  # no-op without DDP


def test_same_seed_same_batches(train_set: CocoDetection) -> None:
    """Order comes from the loader's generator; augmentations from the worker seeds derived from it."""
    def first_batch(seed: int) -> tuple[list[int], torch.Tensor]:
        loader = build_dataloader(train_set, batch_size=5, train=True, workers=1, seed=seed)
        images, targets = next(iter(loader))
        return [int(t["image_id"]) for t in targets], images

    ids_a, images_a = first_batch(0)
    ids_b, images_b = first_batch(0)
    ids_c, images_c = first_batch(1)
    assert ids_a == ids_b and torch.equal(images_a, images_b)
    assert ids_a != ids_c or not torch.equal(images_a, images_c)


def test_eval_loader_is_sequential_and_complete(synthetic_dir: Path) -> None:
    valid = CocoDetection(synthetic_dir, "valid", transforms=eval_transforms(64))
    loader = build_dataloader(valid, batch_size=3, train=False, workers=0)
    assert isinstance(loader.sampler, SequentialSampler) and not loader.drop_last
    assert [i for b in _ids(loader) for i in b] == valid.image_ids  # 8 images: 3 + 3 + 2


def test_rejects_bad_arguments(train_set: CocoDetection) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        build_dataloader(train_set, batch_size=0, train=True)
