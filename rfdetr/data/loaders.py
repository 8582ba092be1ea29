"""DataLoaders with RF-DETR's sampling rules (spec 5.5), reproducible from one seed.

- Train: shuffled, ``drop_last=True`` so every step sees a full batch. A training set smaller than
  ``5 x batch_size x grad_accum_steps`` images is sampled *with replacement*, exactly that many images per epoch
  (5 optimizer steps), so tiny datasets still get a useful epoch. Under DDP a ``DistributedSampler`` splits the set.
- Eval: sequential, ``drop_last=False``; under DDP a non-shuffling ``DistributedSampler`` (it repeats a few images to
  even out the ranks; :class:`rfdetr.data.coco_eval.CocoEvaluator` counts each image once).
- Reproducibility: the shuffling order comes from a ``torch.Generator`` seeded with ``seed`` (plus the rank for the
  per-rank parts), and each worker seeds ``random`` and numpy from its torch seed, which the DataLoader derives from
  that generator. Transforms draw from torch's RNG, so with ``workers > 0`` the augmentations are reproducible too;
  with ``workers=0`` they use the main process's RNG (seed it with ``torch.manual_seed``).
- Call :func:`set_epoch` at the start of every epoch: a ``DistributedSampler`` reshuffles only when told the epoch.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from rfdetr.data.coco import collate_fn

logger = logging.getLogger(__name__)

# A tiny training set is drawn with replacement to this many optimizer steps per epoch (upstream's rule).
MIN_STEPS_PER_EPOCH = 5


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed Python's and numpy's RNGs from the worker's torch seed (torch seeds itself)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _dist_info(distributed: bool | None) -> tuple[bool, int, int]:
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def build_dataloader(dataset: Dataset, batch_size: int, train: bool, workers: int = 2, seed: int = 0,
                     distributed: bool | None = None, grad_accum_steps: int = 1) -> DataLoader:
    """A DataLoader yielding ``(images [B, 3, S, S], list of target dicts)`` (see :func:`rfdetr.data.coco.collate_fn`).

    Args:
        dataset: a map-style dataset, e.g. :class:`rfdetr.data.coco.CocoDetection`.
        batch_size: images per step and per process.
        train: training rules (shuffle, drop_last, with-replacement sampling of tiny sets) or eval rules.
        workers: DataLoader worker processes (0 loads in the main process).
        seed: seeds shuffling and, through the worker seeds, the augmentations.
        distributed: use a DistributedSampler; ``None`` means "if torch.distributed is initialised".
        grad_accum_steps: micro-batches per optimizer step; only used for the tiny-set rule.

    Raises:
        ValueError: ``batch_size`` < 1, or an empty dataset for training.
    """
    if batch_size < 1 or grad_accum_steps < 1:
        raise ValueError(f"batch_size and grad_accum_steps must be >= 1, got {batch_size}, {grad_accum_steps}")
    distributed, rank, world_size = _dist_info(distributed)
    # Per-rank stream for what differs between ranks (worker seeds, with-replacement draws); the DistributedSampler
    # itself must get the same seed on every rank so that the ranks partition one permutation.
    generator = torch.Generator().manual_seed(seed + rank)
    sampler: Sampler
    if train:
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        min_images = MIN_STEPS_PER_EPOCH * batch_size * grad_accum_steps
        if len(dataset) < min_images * world_size:
            logger.info("training set has %d images (< %d): drawing %d per epoch and rank with replacement",
                        len(dataset), min_images * world_size, min_images)
            sampler = RandomSampler(dataset, replacement=True, num_samples=min_images, generator=generator)
        elif distributed:
            sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=True)
        else:
            sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = DistributedSampler(dataset, shuffle=False) if distributed else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        collate_fn=collate_fn,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a DistributedSampler the epoch so that it reshuffles (no-op for the other samplers)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
