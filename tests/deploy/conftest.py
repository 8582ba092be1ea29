"""The tiny models every format's tests export, and their exported files, made once per session and shared by the
contract test (tests/deploy/test_contract.py) and the format-specific tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rfdetr import export as export_cli
from rfdetr.deploy.export.formats import get_format
from rfdetr.detr import RFDETR, load_model
from tests.deploy.models import tiny_detector, tiny_segmenter

# What each exported kind is: the tiny detector (batch 1), the single-stage segmenter (batch 2), and the stage-2
# checkpoint with MaskHeadDynamic exported by the command line (its image path and per-query MLPs are the ops a
# stage-2 file adds over the single-stage segmenter; MaskHeadNano's dot product is that segmenter's own op set).
EXPORT_KINDS: tuple[str, ...] = ("detector", "segmenter", "stage2")


def require_format(name: str) -> None:
    """Skip the calling test when the format's packages are not installed (``make test`` installs them all)."""
    fmt = get_format(name)
    missing = fmt.missing()
    if missing:
        pytest.skip(f"{name} tests need {', '.join(missing)}: {fmt.install}")


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


@pytest.fixture(scope="module")
def stage2_dynamic(tiny_dynamic_checkpoint: Path) -> RFDETR:
    """The stage-2 checkpoint with MaskHeadDynamic, loaded as the command-line tools load it."""
    return load_model(tiny_dynamic_checkpoint, "tiny", device="cpu")


@pytest.fixture(scope="session")
def exported(
    tmp_path_factory: pytest.TempPathFactory, tiny_dynamic_checkpoint: Path
) -> Callable[[str, str], Path]:
    """``exported(kind, format)``: the file of one of :data:`EXPORT_KINDS` in one format, exported on first use and
    shared for the rest of the session (ExecuTorch's lowering takes minutes: each file is made once). Read-only."""
    files: dict[tuple[str, str], Path] = {}

    def get(kind: str, name: str) -> Path:
        require_format(name)
        if (kind, name) not in files:
            out = tmp_path_factory.mktemp(f"{kind}_{name}")
            if kind == "detector":
                files[kind, name] = tiny_detector().export(out, format=name)
            elif kind == "segmenter":
                files[kind, name] = tiny_segmenter().export(out, format=name, batch_size=2)
            elif kind == "stage2":
                argv = ["--weights", str(tiny_dynamic_checkpoint), "--output", str(out), "--format", name]
                assert export_cli.main(export_cli.get_args_parser().parse_args(argv)) == 0
                files[kind, name] = out / f"inference_model{get_format(name).suffix}"
            else:
                raise ValueError(f"unknown export kind {kind!r}; one of {EXPORT_KINDS}")
        return files[kind, name]

    return get
