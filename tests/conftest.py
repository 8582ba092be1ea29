"""Fixtures shared by the whole suite: where ../shared is, and a small synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from rfdetr.data.synthetic import SyntheticSpec, write_synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips the calling test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test reads ../shared beside the repository (clone it there to run it)")
    return path


@pytest.fixture(scope="session")
def strawberry_dir() -> Path:
    """The real Roboflow export in ../shared/datasets/strawberry (skips when absent)."""
    return shared_path("datasets", "strawberry")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic dataset (train 24 / valid 8 / test 4 images), written once per session. Read-only."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), SyntheticSpec())
