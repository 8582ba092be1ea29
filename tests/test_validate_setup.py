"""validate_setup.py: a clean dataset passes; each kind of breakage is reported with its id and exit code 1."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import validate_setup
from rfdetr.data.synthetic import ANNOTATION_FILE


def run(dataset: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    args = validate_setup.get_args_parser().parse_args(["--dataset", str(dataset), "--skip_env", *extra])
    code = validate_setup.main(args)
    return code, capsys.readouterr().out


def edit_json(root: Path, split: str, fn: Callable[[dict], None]) -> None:
    path = root / split / ANNOTATION_FILE
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def copy(synthetic_dir: Path, tmp_path: Path) -> Path:
    """A private, breakable copy of the synthetic dataset."""
    return Path(shutil.copytree(synthetic_dir, tmp_path / "ds"))


def fail_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("FAIL")]


def test_clean_synthetic_dataset_passes_stage2(synthetic_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out = run(synthetic_dir, capsys, "--stage", "2")
    assert code == 0, out
    assert "0 FAIL" in out
    assert "masks: {" in out and "uncompressed_rle" in out and "'rle'" in out and "polygon" in out


def test_strawberry_passes_stage2_with_summary(strawberry_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out = run(strawberry_dir, capsys, "--stage", "2")
    assert code == 0, out
    assert "train  images   117" in out
    assert "'Fruit': 162" in out and "'Leaf': 192" in out and "'Flower': 75" in out
    assert "masks: {'polygon': 429}" in out
    assert "640x640 (117)" in out
    assert "'Strawberry-Plants-Parts' has no annotations" in out  # the placeholder category is explained


def test_environment_checks_print(capsys: pytest.CaptureFixture, synthetic_dir: Path) -> None:
    args = validate_setup.get_args_parser().parse_args(["--dataset", str(synthetic_dir)])
    assert validate_setup.main(args) == 0
    out = capsys.readouterr().out
    assert "PASS  Python" in out and "torchvision compiled ops work" in out and "free under" in out


def _first(data: dict, key: str) -> dict:
    return data[key][0]


def test_missing_image(copy: Path, capsys: pytest.CaptureFixture) -> None:
    (copy / "train" / "train_0003.png").unlink()
    code, out = run(copy, capsys)
    assert code == 1
    assert any("[train]" in ln and "image id 3 'train_0003.png'" in ln and "file not found" in ln
               for ln in fail_lines(out)), out


def test_unreadable_image(copy: Path, capsys: pytest.CaptureFixture) -> None:
    (copy / "valid" / "valid_0002.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    code, out = run(copy, capsys)
    assert code == 1
    assert any("[valid]" in ln and "image id 2 'valid_0002.jpg'" in ln and "cannot be decoded" in ln
               for ln in fail_lines(out)), out


def test_json_syntax_error(copy: Path, capsys: pytest.CaptureFixture) -> None:
    path = copy / "train" / ANNOTATION_FILE
    path.write_text(path.read_text()[:-40])
    code, out = run(copy, capsys)
    assert code == 1
    assert any("[train]" in ln and "JSON syntax error at line" in ln for ln in fail_lines(out)), out


def test_unknown_category_id(copy: Path, capsys: pytest.CaptureFixture) -> None:
    edit_json(copy, "train", lambda d: _first(d, "annotations").update(category_id=42))
    code, out = run(copy, capsys)
    assert code == 1
    assert any("annotation id 0" in ln and "category_id 42" in ln for ln in fail_lines(out)), out


def test_bbox_outside_image(copy: Path, capsys: pytest.CaptureFixture) -> None:
    edit_json(copy, "valid", lambda d: d["annotations"][2].update(bbox=[150.0, 10.0, 30.0, 20.0]))
    code, out = run(copy, capsys)
    assert code == 1
    assert any("[valid]" in ln and "annotation id 2" in ln and "outside the 160x128 image" in ln
               for ln in fail_lines(out)), out


def test_zero_area_box(copy: Path, capsys: pytest.CaptureFixture) -> None:
    edit_json(copy, "train", lambda d: d["annotations"][5].update(bbox=[10.0, 10.0, 0.0, 12.0]))
    code, out = run(copy, capsys)
    assert code == 1
    assert any("annotation id 5" in ln and "zero or negative area" in ln for ln in fail_lines(out)), out


def test_empty_segmentation_fails_stage2_only(copy: Path, capsys: pytest.CaptureFixture) -> None:
    edit_json(copy, "train", lambda d: d["annotations"][4].update(segmentation=[]))
    code, out = run(copy, capsys, "--stage", "2")
    assert code == 1
    assert any("annotation id 4" in ln and "empty segmentation" in ln for ln in fail_lines(out)), out
    code, out = run(copy, capsys, "--stage", "1")
    assert code == 0, out  # stage 1 trains boxes only: a missing mask is counted, not an error
    assert "'missing': 1" in out


def test_polygon_that_decodes_empty(copy: Path, capsys: pytest.CaptureFixture) -> None:
    edit_json(copy, "train", lambda d: d["annotations"][0].update(segmentation=[[5, 5, 5, 5, 5, 5]]))
    code, out = run(copy, capsys, "--stage", "2")
    assert code == 1
    assert any("annotation id 0" in ln and "empty mask" in ln for ln in fail_lines(out)), out


def test_image_size_differs_from_json(copy: Path, capsys: pytest.CaptureFixture) -> None:
    edit_json(copy, "test", lambda d: d["images"][1].update(width=200))
    code, out = run(copy, capsys)
    assert code == 1
    assert any("[test]" in ln and "image id 1" in ln and "file is 160x128 but the JSON says 200x128" in ln
               for ln in fail_lines(out)), out


def test_missing_valid_split(copy: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.rmtree(copy / "valid")
    code, out = run(copy, capsys)
    assert code == 1
    assert any("[valid] folder missing" in ln for ln in fail_lines(out)), out


def test_many_problems_of_one_kind_are_capped(copy: Path, capsys: pytest.CaptureFixture) -> None:
    def break_all(d: dict) -> None:
        for ann in d["annotations"]:
            ann["category_id"] = 99

    edit_json(copy, "train", break_all)
    code, out = run(copy, capsys, "--max_lines", "5")
    assert code == 1
    assert len([ln for ln in fail_lines(out) if "category_id 99" in ln]) == 5
    n = len(json.loads((copy / "train" / ANNOTATION_FILE).read_text())["annotations"])
    assert f"and {n - 5} more 'unknown category id' problems not shown ({n} in all)" in out


def test_validator_counts_the_boxes_training_clips(copy: Path, capsys: pytest.CaptureFixture,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Issue #23 point 10: one clipping rule for validate_setup.py and training, and the count in the summary (the
    validator said PASS while training warned '15 boxes clipped to the image')."""
    from rfdetr.data.coco import CocoDetection

    def overshoot(data: dict) -> None:
        width = {im["id"]: im["width"] for im in data["images"]}
        for ann in data["annotations"][:3]:  # the right side 0.3 px past the image: rounding, not an error
            x, y, w, h = ann["bbox"]
            ann["bbox"] = [x, y, width[ann["image_id"]] - x + 0.3, h]
        data["annotations"][3]["bbox"][0] = -0.2  # the left side

    edit_json(copy, "train", overshoot)
    code, out = run(copy, capsys)
    assert code == 0, out
    with caplog.at_level("INFO", logger="rfdetr.data.coco"):
        trained = CocoDetection(copy, "train").stats["boxes clipped to the image"]
    assert trained == 4
    # rounding-size clipping is routine on both sides: INFO in training too, no warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    assert "4 boxes clipped to the image (rounding" in caplog.text
    assert f"boxes clipped to the image: {trained})" in out
    assert any(ln.startswith("INFO") and "[train] 4 boxes poke out" in ln and "training clips them" in ln
               for ln in out.splitlines()), out
    assert "boxes clipped to the image: 0)" in out  # valid is untouched
