"""Plain helpers every test folder shares (fixtures live in conftest.py files; these are functions they import).

* :func:`shared_path`: a file or folder under ``../shared`` (the reference checkpoints and datasets kept outside git),
  or a skip of the calling test with the reason when it is absent;
* :func:`perturb`: random non-trivial weights for a freshly built module (zero-initialised layers such as the box
  delta and the mask bias would hide errors).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
REFS = SHARED / "refs"


def shared_path(*parts: str | Path) -> Path:
    """A path under ../shared; skips the calling test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test reads ../shared beside the repository (clone it there to run it)")
    return path


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Add ``scale`` * N(0, 1) noise (a seeded generator) to every parameter of ``module``, in place; returns it."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module
