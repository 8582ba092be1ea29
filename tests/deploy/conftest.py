"""The tiny models every format's tests export, built once per test module (each module exports its own files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rfdetr.detr import RFDETR, load_model
from tests.deploy.models import tiny_detector, tiny_segmenter


@pytest.fixture(scope="module")
def detector() -> RFDETR:
    """The tiny detector (3 classes, perturbed random weights)."""
    return tiny_detector()


@pytest.fixture(scope="module")
def segmenter() -> RFDETR:
    """The tiny single-stage segmentation model."""
    return tiny_segmenter()


@pytest.fixture(scope="module")
def stage2(tiny_stage2_checkpoint: Path) -> RFDETR:
    """The stage-2 checkpoint (tiny detector + MaskHeadNano) loaded as the command-line tools load it."""
    return load_model(tiny_stage2_checkpoint, "tiny", device="cpu")
