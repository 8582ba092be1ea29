"""Fixtures shared by the whole suite: where ../shared is, and a small synthetic dataset."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rfdetr.data.synthetic import SyntheticSpec, write_synthetic_dataset
from tests.helpers import perturb, shared_path


@pytest.fixture(scope="session")
def strawberry_dir() -> Path:
    """The real Roboflow export in ../shared/datasets/strawberry (skips when absent)."""
    return shared_path("datasets", "strawberry")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default synthetic dataset (train 24 / valid 8 / test 4 images), written once per session. Read-only."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), SyntheticSpec())


def write_tiny_stage2_checkpoint(directory: Path, kind: str) -> Path:
    """A stage-2 checkpoint as ``train_seg_stage2.py`` writes it: the tiny detector (3 classes) + a ``kind`` mask head,
    with random non-trivial weights (the zero-initialised box delta and mask bias perturbed). Load with ``--size tiny``.
    """
    from rfdetr.checkpoint import make_checkpoint, save_checkpoint
    from rfdetr.config import TINY_CONFIG
    from rfdetr.models import build_model
    from rfdetr.models.mask_head import MaskHeadConfig, build_mask_head
    from rfdetr.models.segmenter import Segmenter

    names = ["circle", "square", "triangle"]
    cfg = TINY_CONFIG.replace(num_classes=3, class_names=tuple(names))
    torch.manual_seed(0)
    head_cfg = MaskHeadConfig(kind, cfg.hidden_dim, cfg.dec_layers)
    model = perturb(Segmenter(build_model(cfg), build_mask_head(head_cfg)), 3)
    path = directory / "checkpoint_best_total.pth"
    ckpt = make_checkpoint(model.checkpoint_state_dict(), cfg, names, stage="seg_stage2", mask_head=head_cfg.to_dict())
    save_checkpoint(ckpt, path)
    return path


@pytest.fixture(scope="session")
def tiny_stage2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny detector + MaskHeadNano as a stage-2 checkpoint (:func:`write_tiny_stage2_checkpoint`)."""
    return write_tiny_stage2_checkpoint(tmp_path_factory.mktemp("stage2"), "nano")


@pytest.fixture(scope="session")
def tiny_dynamic_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny detector + MaskHeadDynamic (image path, per-query MLPs) as a stage-2 checkpoint."""
    return write_tiny_stage2_checkpoint(tmp_path_factory.mktemp("stage2_dynamic"), "dynamic")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Tiny tensors gain nothing from intra-op threads, and on a shared CPU the OpenMP threads of each op wait for each
    other: one thread is several times faster there. The previous count is restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def four_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 synthetic 64x64 images (polygon, RLE and raw-RLE masks) used as both train and valid: the overfit set."""
    root = tmp_path_factory.mktemp("four")
    write_synthetic_dataset(root, SyntheticSpec(splits=(("train", 4),), width=64, height=64, max_objects=2, seed=3))
    shutil.copytree(root / "train", root / "valid")
    return root


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's folder after ``python -m rfdetr.demo`` (dataset/, stage1/, stage2/, model.pth, prediction.png): its
    trained tiny model serves the demo, video and INT8 tests. Trained once per session (a few minutes on 2 cores);
    ``RFDETR_TEST_DEMO_DIR=runs/demo`` reuses a finished demo folder instead (local iterations only)."""
    import os

    reuse = os.environ.get("RFDETR_TEST_DEMO_DIR")
    if reuse and (Path(reuse) / "model.pth").is_file():
        return Path(reuse).resolve()
    from rfdetr import demo

    out = tmp_path_factory.mktemp("demo")
    assert demo.main(demo.get_args_parser().parse_args(["--output", str(out)])) == 0
    return out
