"""Seeding and RNG snapshots, so that a resumed run draws the same random numbers as an uninterrupted one.

:func:`rng_state` returns only plain containers and tensors, so it can go into a checkpoint that is loaded with
``torch.load(weights_only=True)``. DataLoader workers need nothing extra: torch seeds Python, NumPy and torch in
each worker from the loader's base seed, which itself comes from the (restored) torch generator.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python, NumPy and torch (CPU and every GPU) with ``seed + rank``; returns that value.

    Adding the rank gives each process different augmentations while keeping the run reproducible.
    """
    value = seed + rank
    random.seed(value)
    np.random.seed(value % 2**32)  # NumPy's legacy seeding only takes 32-bit values
    torch.manual_seed(value)  # also seeds all CUDA devices
    return value


def rng_state() -> dict[str, Any]:
    """Snapshot of the Python, NumPy, torch CPU and (when available) CUDA generators."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore a :func:`rng_state` snapshot. A CUDA state is skipped (not an error) on a machine without CUDA."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    keys = np.asarray(torch.as_tensor(npy["keys"]).numpy(), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, device=index)
