"""What every export format promises, checked for each format of the registry (one parametrised test per promise).

For the tiny detector (batch 1), the single-stage segmenter (batch 2) and a stage-2 checkpoint (MaskHeadDynamic,
exported by ``python -m rfdetr.export``):

* the file's outputs match PyTorch's within the float32 error model's bounds (tests/tolerances.py) and ``predict()``
  gives the same detections, on synthetic and on real pictures;
* the metadata travels with the file (class names, resolution, mean / std, ``num_select``, format, precision) and
  the export report sits beside it; the atomic writes leave no temporary file;
* ``half`` is refused, with the reason, by the formats that do not offer it;
* a foreign, truncated or missing file is refused with one line that names it.

What only one format does (ONNX's dynamic batch and graph portability, OpenVINO's float16 weights and NNCF INT8,
LiteRT's integer I/O, ExecuTorch's threadpool ...) is tested in that format's own file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD
from rfdetr.data.image_io import read_rgb
from rfdetr.deploy import load
from rfdetr.deploy.export.exporter import default_file_name
from rfdetr.deploy.export.formats import FORMATS, get_format
from rfdetr.deploy.export.report import report_path
from rfdetr.detr import RFDETR
from rfdetr.models.segmenter import Segmenter
from tests.deploy.conftest import require_format
from tests.deploy.models import NAMES, RESOLUTION, assert_outputs_match, assert_same_detections, image

pytestmark = pytest.mark.usefixtures("one_thread")

# ExecuTorch's XNNPACK lowering takes minutes even for the tiny models: its cases are marked slow, as its module was.
FORMAT_PARAMS = [pytest.param(name, marks=[pytest.mark.slow] if name == "executorch" else [], id=name)
                 for name in FORMATS]
THREE_IMAGES = [image(), image(40, 64, 1), image(64, 48, 2)]


@pytest.fixture(scope="module", params=FORMAT_PARAMS)
def fmt(request: pytest.FixtureRequest) -> str:
    require_format(request.param)
    return request.param


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


def test_detection_export_matches_pytorch(fmt: str, detector: RFDETR, exported: Callable[[str, str], Path]) -> None:
    path = exported("detector", fmt)
    assert path.name == default_file_name(fmt) and path.is_file()
    assert _leftovers(path.parent) == []  # the atomic writes left no temporary file behind
    model = load(path, threads=1)
    assert model.format.name == fmt and model.class_names == NAMES and not model.masks and model.batch_size == 1
    assert model.session.input_shape == (1, 3, RESOLUTION, RESOLUTION)
    assert model.session.output_names == ["dets", "labels"]
    assert_outputs_match(detector, model)  # float32: the error model's bounds (tests/tolerances.py)
    # Three images of different sizes through a batch-1 file: predict() runs them one by one.
    assert_same_detections(detector, model, THREE_IMAGES)
    single = model.predict(image(), threshold=0.5)
    assert not isinstance(single, list) and (single.confidence > 0.5).all()


def test_metadata_and_report_travel_with_the_file(fmt: str, exported: Callable[[str, str], Path]) -> None:
    path = exported("detector", fmt)
    meta = load(path).metadata
    assert meta["class_names"] == NAMES and meta["resolution"] == RESOLUTION and meta["masks"] is False
    assert meta["num_select"] == 20 and meta["format"] == fmt and meta["precision"] == "float32"
    assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
    assert str(meta["producer"]).startswith("rt-detr-seg ")
    report = json.loads(report_path(path).read_text())
    assert report["format"] == fmt and report["precision"] == "float32"


def test_segmentation_export_batch_two_matches_pytorch(
    fmt: str, segmenter: RFDETR, exported: Callable[[str, str], Path]
) -> None:
    model = load(exported("segmenter", fmt))
    assert model.masks and model.batch_size == 2 and model.session.output_names == ["dets", "labels", "masks"]
    assert model.session.input_shape == (2, 3, RESOLUTION, RESOLUTION)
    assert_outputs_match(segmenter, model, batch=2)
    # Three images through a batch-2 file: one full chunk, one padded.
    assert_same_detections(segmenter, model, THREE_IMAGES)


def test_stage2_export_cli_matches_pytorch(
    fmt: str, stage2_dynamic: RFDETR, exported: Callable[[str, str], Path]
) -> None:
    assert isinstance(stage2_dynamic.model, Segmenter) and stage2_dynamic.masks
    assert type(stage2_dynamic.model.mask_head).__name__ == "MaskHeadDynamic"
    model = load(exported("stage2", fmt))
    assert model.masks and model.class_names[:3] == NAMES
    assert_outputs_match(stage2_dynamic, model)
    assert_same_detections(stage2_dynamic, model, THREE_IMAGES[:2])


def test_predict_on_strawberry_images(
    fmt: str, stage2_dynamic: RFDETR, exported: Callable[[str, str], Path], strawberry_dir: Path
) -> None:
    pictures = [np.asarray(read_rgb(p)) for p in sorted((strawberry_dir / "valid").glob("*.jpg"))[:2]]
    assert len(pictures) == 2
    assert_same_detections(stage2_dynamic, load(exported("stage2", fmt)), pictures)


@pytest.mark.parametrize("name", [n for n, f in FORMATS.items() if f.half is None])
def test_half_is_refused_where_not_offered(name: str, detector: RFDETR, tmp_path: Path) -> None:
    """Formats without float16 weights refuse ``half`` before any work, with the registry's reason (the float16
    files of the others are checked in their own test files, each against its own measured float16 bounds)."""
    require_format(name)
    with pytest.raises(ValueError, match=f"^--half is not offered for {name}: {get_format(name).no_half}"):
        detector.export(tmp_path, format=name, half=True)
    assert list(tmp_path.iterdir()) == []


def test_bad_files_give_one_clear_error(fmt: str, exported: Callable[[str, str], Path], tmp_path: Path) -> None:
    suffix = get_format(fmt).suffix
    good = exported("detector", fmt)
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(os.urandom(256))
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(good.read_bytes()[:1000])
    for bad in (garbage, truncated):
        with pytest.raises(ValueError, match=f"^{bad}") as info:
            load(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="exported model not found"):
        load(tmp_path / f"missing{suffix}")
