"""Fixtures for the model tests: the shared rfdetr reference files and a nano model loaded from them."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest
import torch

from rfdetr.config import MODEL_PRESETS
from rfdetr.models import RFDETRModel, build_model
from tests.models.refs import KP_MASK_KEY, NANO_CKPT, NANO_IO, NANO_TRAIN, require


@pytest.fixture(scope="package", autouse=True)
def _one_thread() -> Iterator[None]:
    # Several test suites share a 2-core machine; with a busy second core, OpenMP barriers make a 2-thread forward
    # several times slower than a 1-thread one, so the model tests run single-threaded (restored afterwards).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def nano_state_dict() -> dict[str, torch.Tensor]:
    """The reference nano checkpoint's state dict, without the keypoint buffer."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(require(NANO_CKPT), map_location="cpu", weights_only=True)
    return {k: v for k, v in ckpt["model"].items() if k != KP_MASK_KEY}


@pytest.fixture(scope="session")
def nano_model(nano_state_dict: dict[str, torch.Tensor]) -> RFDETRModel:
    """Nano preset (91 logits, as in the refs) with the reference weights, strictly loaded, eval mode."""
    cfg = MODEL_PRESETS["nano"]
    assert nano_state_dict["class_embed.bias"].shape[0] == cfg.num_classes + 1
    with torch.device("meta"):  # skip the random init: every tensor comes from the checkpoint
        model = build_model(cfg)
    model.load_state_dict(nano_state_dict, strict=True, assign=True)
    return model.eval()


@pytest.fixture(scope="session")
def nano_eval_outputs(nano_model: RFDETRModel, nano_io: dict) -> dict[str, dict]:
    """Our eval outputs for the two reference inputs, computed once for all tests."""
    with torch.no_grad():
        return {name: nano_model(nano_io[f"{name}_input"]) for name in ("random", "synthetic")}


@pytest.fixture(scope="session")
def nano_io() -> dict:
    """Inputs and reference eval outputs (see shared/refs/README.md)."""
    return torch.load(require(NANO_IO), map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def nano_train_ref() -> dict:
    """Train-mode reference (batch of 2, all 13 query groups)."""
    return torch.load(require(NANO_TRAIN), map_location="cpu", weights_only=True)
