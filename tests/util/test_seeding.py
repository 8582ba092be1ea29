"""Seeding and RNG snapshots: restoring a snapshot reproduces the same draws, also through a weights_only checkpoint."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from rfdetr.util.seeding import rng_state, seed_everything, set_rng_state


def _draws() -> tuple:
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()


def test_seed_everything_is_reproducible_and_rank_dependent() -> None:
    assert seed_everything(42) == 42
    first = _draws()
    seed_everything(42)
    assert _draws() == first
    assert seed_everything(42, rank=1) == 43
    assert _draws() != first


def test_rng_state_round_trip_through_a_weights_only_checkpoint() -> None:
    seed_everything(7)
    _draws()  # mid-stream, with a cached Gaussian in Python and NumPy
    buffer = io.BytesIO()
    torch.save({"rng": rng_state()}, buffer)
    expected = _draws()
    _draws()  # move every generator on
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True)["rng"])
    assert _draws() == expected
