"""ExecuTorch export: the tiny detection, single-stage segmentation and stage-2 models run in the ExecuTorch runtime
(XNNPACK delegate) like PyTorch.

Lowering to XNNPACK takes minutes even for the tiny models (ExecuTorch's Python graph passes), so each model is
exported once per module and every check reads that file; the module is marked ``slow``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch", reason="ExecuTorch export tests need executorch (pip install executorch==1.5.1)")

from rfdetr import export as export_cli  # noqa: E402
from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from rfdetr.data.image_io import read_rgb  # noqa: E402
from rfdetr.deploy import load  # noqa: E402
from rfdetr.deploy.export.metadata import sidecar_path  # noqa: E402
from rfdetr.detr import RFDETR, load_model  # noqa: E402
from rfdetr.models.segmenter import Segmenter  # noqa: E402
from tests.deploy.models import (  # noqa: E402
    NAMES,
    RESOLUTION,
    assert_outputs_match,
    assert_same_detections,
    image,
)

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def detector_pte(detector: RFDETR, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return detector.export(tmp_path_factory.mktemp("det_pte"), format="executorch")


@pytest.fixture(scope="module")
def segmenter_pte(segmenter: RFDETR, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return segmenter.export(tmp_path_factory.mktemp("seg_pte"), format="executorch", batch_size=2)


@pytest.fixture(scope="module")
def stage2(tiny_dynamic_checkpoint: Path) -> RFDETR:
    """The stage-2 model with MaskHeadDynamic: its image path and per-query MLPs are the ops a stage-2 file adds over
    the single-stage segmenter (MaskHeadNano's dot product is that segmenter's own op set)."""
    return load_model(tiny_dynamic_checkpoint, "tiny", device="cpu")


@pytest.fixture(scope="module")
def stage2_pte(tiny_dynamic_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stage-2 checkpoint (MaskHeadDynamic) exported by ``python -m rfdetr.export --format executorch``."""
    out = tmp_path_factory.mktemp("stage2_pte")
    argv = ["--weights", str(tiny_dynamic_checkpoint), "--output", str(out), "--format", "executorch"]
    assert export_cli.main(export_cli.get_args_parser().parse_args(argv)) == 0
    return out / "inference_model.pte"


def test_detection_export_matches_pytorch(detector: RFDETR, detector_pte: Path) -> None:
    folder = detector_pte.parent
    assert detector_pte.name == "inference_model.pte"
    assert sorted(p.name for p in folder.iterdir()) == [
        "inference_model.pte", "inference_model.pte.json", "inference_model.pte.report.json"]  # no temporary files
    meta = json.loads(sidecar_path(detector_pte).read_text())
    assert json.loads(meta["class_names"]) == NAMES and json.loads(meta["resolution"]) == RESOLUTION
    assert meta["format"] == "executorch" and meta["precision"] == "float32" and meta["masks"] == "false"
    assert json.loads(meta["mean"]) == list(IMAGENET_MEAN) and json.loads(meta["std"]) == list(IMAGENET_STD)
    exported = load(detector_pte, threads=1)
    assert exported.format.name == "executorch" and exported.class_names == NAMES and not exported.masks
    assert exported.session.input_shape == (1, 3, RESOLUTION, RESOLUTION)
    assert exported.session.output_names == ["dets", "labels"]
    assert_outputs_match(detector, exported)
    assert_same_detections(detector, exported, [image(), image(40, 64, 1), image(64, 48, 2)])


def test_segmentation_export_batch_two_matches_pytorch(segmenter: RFDETR, segmenter_pte: Path) -> None:
    exported = load(segmenter_pte)
    assert exported.masks and exported.batch_size == 2 and exported.session.output_names == ["dets", "labels", "masks"]
    assert_outputs_match(segmenter, exported, batch=2)
    assert_same_detections(segmenter, exported, [image(), image(40, 64, 1), image(64, 48, 2)])


def test_stage2_export_cli_matches_pytorch(stage2: RFDETR, stage2_pte: Path) -> None:
    assert isinstance(stage2.model, Segmenter) and stage2.masks
    exported = load(stage2_pte)
    assert exported.masks and exported.class_names[:3] == NAMES
    assert_outputs_match(stage2, exported)
    assert_same_detections(stage2, exported, [image(), image(40, 64, 1)])


def test_predict_on_strawberry_images(stage2: RFDETR, stage2_pte: Path, strawberry_dir: Path) -> None:
    pictures = [np.asarray(read_rgb(p)) for p in sorted((strawberry_dir / "valid").glob("*.jpg"))[:2]]
    assert len(pictures) == 2
    assert_same_detections(stage2, load(stage2_pte), pictures)


def test_half_is_refused(detector: RFDETR, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--half is not offered for executorch"):
        detector.export(tmp_path, format="executorch", half=True)
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_foreign_and_broken_files(detector_pte: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pte"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match=f"^{garbage}: the ExecuTorch runtime cannot load it as a program") as info:
        load(garbage)
    assert "\n" not in str(info.value)
    truncated = tmp_path / "truncated.pte"
    truncated.write_bytes(detector_pte.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"^{truncated}: the ExecuTorch runtime cannot load it"):
        load(truncated)
    # A good program whose metadata JSON was not copied along.
    lonely = tmp_path / "lonely.pte"
    lonely.write_bytes(detector_pte.read_bytes())
    with pytest.raises(ValueError, match=f"^{lonely}: its metadata file .*lonely.pte.json is missing"):
        load(lonely)


def test_failed_export_leaves_no_files(detector: RFDETR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The program is written, then the metadata write fails: neither file is left (lowering is faked: it is slow)."""
    import executorch.exir

    from rfdetr.deploy.export.formats import executorch as et_format

    class Lowered:
        def to_executorch(self) -> object:
            return type("Program", (), {"buffer": b"\0" * 64})()

    def fail(path: object, metadata: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(torch.export, "export", lambda *args, **kwargs: None)
    monkeypatch.setattr(executorch.exir, "to_edge_transform_and_lower", lambda *args, **kwargs: Lowered())
    monkeypatch.setattr(et_format, "write_sidecar", fail)
    with pytest.raises(OSError, match="No space left"):
        detector.export(tmp_path, format="executorch")
    assert list(tmp_path.iterdir()) == []


_THREADPOOL_SCRIPT = """
import logging, sys
import numpy as np
from executorch.extension.pybindings import portable_lib
from rfdetr.deploy.export.formats.executorch import Session
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
first = Session(sys.argv[1], threads=1)
print("pool", portable_lib._threadpool_get_thread_count())
second = Session(sys.argv[1], threads=2)
print("pool", portable_lib._threadpool_get_thread_count())
pixels = np.random.default_rng(0).random(first.input_shape, dtype=np.float32)
a, b = first.run(pixels), second.run(pixels)
assert all(np.array_equal(x, y) for x, y in zip(a, b))
print("ran both")
"""


def test_threadpool_is_sized_before_loading_and_never_under_a_loaded_program(detector_pte: Path) -> None:
    """XNNPACK binds the pool a program is loaded with; resizing it afterwards crashed the next execute() (a segfault
    on a 2-core AVX512 host). Run in a child process, so a regression fails this test instead of killing pytest."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _THREADPOOL_SCRIPT, str(detector_pte)], capture_output=True,
                            text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-2000:]}"
    lines = result.stdout.splitlines()
    assert lines.count("pool 1") == 2 and lines[-1] == "ran both", result.stdout
    assert any("1 program(s) are loaded on 1 threads; threads=2 ignored" in line for line in lines), result.stdout
