"""``python -m rfdetr.predict``: pictures with masks, one COCO predictions JSON, unreadable files skipped."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from rfdetr import predict as predict_cli
from rfdetr.checkpoint import load_checkpoint_file, save_checkpoint
from rfdetr.data.image_io import read_rgb
from rfdetr.deploy.media.predict import collect_images, detections_to_coco
from rfdetr.deploy.media.visualize import render_detections
from rfdetr.detr import RFDETR, load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_stage2_checkpoint: Path) -> RFDETR:
    return load_model(tiny_stage2_checkpoint, "tiny", device="cpu")


@pytest.fixture(scope="module")
def strawberry_image(strawberry_dir: Path) -> Path:
    return sorted((strawberry_dir / "test").glob("*.jpg"))[0]


def _run(argv: list[str]) -> int:
    return predict_cli.main(predict_cli.get_args_parser().parse_args([*argv, "--no_progress"]))


def _top3_threshold(model: RFDETR, image: np.ndarray) -> float:
    """A threshold that keeps the three best detections (between the 3rd and 4th score)."""
    scores = model.predict(image, threshold=0.0).confidence
    assert scores[2] - scores[3] > 1e-4
    return float(scores[2] + scores[3]) / 2


def test_predict_picture_and_coco_json_on_strawberry(
    model: RFDETR,
    tiny_stage2_checkpoint: Path,
    strawberry_image: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(strawberry_image, source / strawberry_image.name)
    (source / "broken.jpg").write_bytes(b"not a jpeg")  # unreadable: skipped and counted
    image = np.asarray(read_rgb(strawberry_image))
    threshold = _top3_threshold(model, image)
    out = tmp_path / "out"
    weights = ["--weights", str(tiny_stage2_checkpoint), "--size", "tiny"]
    with caplog.at_level(logging.WARNING, logger="rfdetr.deploy.media.predict"):
        code = _run([*weights, "--source", str(source), "--output", str(out), "--threshold", str(threshold)])
    assert code == 0
    assert "1 images, 3 detections, 1 skipped" in capsys.readouterr().out
    assert "1 of 2 files could not be read as images and were skipped" in caplog.text

    # The picture: the image's size, and the masks drawn exactly where predict() puts them.
    picture_path = out / (strawberry_image.stem + ".jpg")
    assert sorted(p.name for p in out.iterdir()) == sorted([picture_path.name, "predictions.json"])
    picture = cv2.cvtColor(cv2.imread(str(picture_path)), cv2.COLOR_BGR2RGB).astype(np.float32)
    assert picture.shape == image.shape
    dets = model.predict(image, threshold=threshold)
    assert len(dets) == 3 and dets.mask is not None
    union = dets.mask.any(0)
    assert union.sum() > 100
    expected = render_detections(image, dets).astype(np.float32)
    assert np.abs(picture - expected).mean() < 2.0  # the same rendering, up to JPEG noise
    change = np.abs(picture - image.astype(np.float32)).sum(-1)  # [H, W]
    drawn = np.zeros(image.shape[:2], dtype=bool)  # boxes, labels and outlines lie near the boxes' edges
    for x0, y0, x1, y1 in dets.xyxy.round().astype(int):
        drawn[max(0, y0 - 30) : y0 + 8, max(0, x0 - 8) : x1 + 8] = True
        drawn[max(0, y1 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8] = True
        drawn[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x0 + 8] = True
        drawn[max(0, y0 - 8) : y1 + 8, max(0, x1 - 8) : x1 + 8] = True
    eroded = cv2.erode(union.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~drawn
    outside = ~cv2.dilate(union.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~drawn
    assert eroded.sum() > 50 and outside.sum() > 50
    assert change[eroded].mean() > 40  # translucent mask colour blended in
    assert change[outside].mean() < 6  # untouched, up to JPEG noise

    # The COCO JSON: pycocotools reads it, and it holds predict()'s boxes, scores and masks.
    coco = COCO(str(out / "predictions.json"))
    assert [img["file_name"] for img in coco.dataset["images"]] == [strawberry_image.name]
    assert coco.dataset["images"][0]["width"] == image.shape[1]
    assert [c["name"] for c in coco.dataset["categories"]][:3] == ["circle", "square", "triangle"]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(anns) == 3
    # The JSON holds the same detections: scores as float(confidence) (equal; approx only for the float64 round trip),
    # boxes rounded to 0.01 px (<= 0.005 off, plus an ulp of the float32 corners <= 374 px, 3e-5): 0.02 is 4x that;
    # measured 0.004 (Zen 4).
    for ann, i in zip(anns, range(3), strict=True):
        assert ann["category_id"] == int(dets.class_id[i]) and ann["score"] == pytest.approx(dets.confidence[i], 1e-4)
        x0, y0, x1, y1 = dets.xyxy[i]
        np.testing.assert_allclose(ann["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=0.02)
        np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), dets.mask[i])
    results = coco.loadRes(coco.dataset["annotations"])  # a valid result list for COCOeval
    assert len(results.getAnnIds()) == 3


def test_predict_with_an_onnx_file_glob_source(
    model: RFDETR, tiny_stage2_checkpoint: Path, strawberry_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="needs onnx and onnxruntime (pip install onnx onnxruntime)")
    pattern = str(strawberry_dir / "test" / "image2*.jpg")
    paths = collect_images(pattern)
    assert len(paths) >= 2 and all(p.name.startswith("image2") for p in paths)
    onnx_path = model.export(tmp_path / "exported")
    common = ["--source", pattern, "--threshold", "0.0"]
    assert _run(["--weights", str(onnx_path), *common, "--output", str(tmp_path / "onnx")]) == 0
    assert (
        _run(["--weights", str(tiny_stage2_checkpoint), "--size", "tiny", *common, "--output", str(tmp_path / "torch")])
        == 0
    )
    onnx_json = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    torch_json = json.loads((tmp_path / "torch" / "predictions.json").read_text())
    assert onnx_json["images"] == torch_json["images"] and len(onnx_json["images"]) == len(paths)
    # onnxruntime vs PyTorch float32 (the error model of tests/tolerances.py): logits ~4 x 1.6e-6 for the tiny models,
    # scores a quarter of that, 1e-4 far above it; boxes within ~4 x 7e-8 normalised, 4e-5 px of the <= 541 px
    # pictures, but both JSONs round to 0.01 px, so one rounding step (0.01) may separate them: 0.05 is 5x that.
    # Measured: boxes 0 (equal after rounding, Zen 4).
    for a, b in zip(onnx_json["annotations"][:10], torch_json["annotations"][:10], strict=True):
        assert a["category_id"] == b["category_id"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=0.05)


def test_predict_errors(tiny_stage2_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    missing = tmp_path / "missing.pth"
    assert _run(["--weights", str(missing), "--source", str(image)]) == 2
    assert f"weights '{missing}' not found" in capsys.readouterr().err
    assert _run(["--weights", str(tiny_stage2_checkpoint), "--source", str(tmp_path / "nothing*.jpg")]) == 2
    assert "no file matches it as a glob" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.jpg").write_text("nope")
    argv = ["--weights", str(tiny_stage2_checkpoint), "--size", "tiny", "--source", str(broken)]
    assert _run([*argv, "--output", str(tmp_path / "out")]) == 2
    assert "none of the 1 source files could be read as an image" in capsys.readouterr().err
    assert collect_images(image) == [image]
    assert collect_images(tmp_path) == [image]  # folders: image suffixes only


def test_detections_to_coco_without_masks() -> None:
    from rfdetr.deploy.runtime.detections import Detections

    dets = Detections(np.array([[1.0, 2.0, 11.0, 7.0]]), np.array([0.75]), np.array([2]), ["b"])
    assert detections_to_coco(dets, image_id=4, first_id=9) == [
        {
            "id": 9,
            "image_id": 4,
            "category_id": 2,
            "bbox": [1.0, 2.0, 10.0, 5.0],
            "score": 0.75,
            "area": 50.0,
            "iscrowd": 0,
        }
    ]


@pytest.mark.parametrize("ids", [[1, 2, 3], [5, 9, 20], None], ids=["ids_1_to_K", "sparse_ids", "not_recorded"])
def test_predictions_use_the_dataset_category_ids(
    ids: list[int] | None, tiny_stage2_checkpoint: Path, strawberry_image: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A checkpoint that records its dataset's category ids writes predictions in those ids (and says so), so the
    dataset's own annotation file scores them with pycocotools; without them, class indices, said as much."""
    ckpt = load_checkpoint_file(tiny_stage2_checkpoint)
    if ids is None:
        ckpt.pop("category_ids", None)
    else:
        ckpt["category_ids"] = ids
    weights = save_checkpoint(ckpt, tmp_path / "model.pth")
    out = tmp_path / "out"
    assert _run(["--weights", str(weights), "--source", str(strawberry_image), "--output", str(out),
                 "--threshold", "0.0"]) == 0
    predictions = json.loads((out / "predictions.json").read_text())
    expected = ids if ids is not None else [0, 1, 2]
    assert predictions["info"]["category_ids"] == ("dataset" if ids is not None else "class_index")
    assert [c["id"] for c in predictions["categories"]][:3] == expected
    # Each class's detections under its own id; the tiny model's spare logit (class 3), which no dataset class owns,
    # under an id above the dataset's (never one of them).
    spare = max(expected) + 1 if ids is not None else 3
    detections = load_model(weights, "tiny", device="cpu").predict(np.asarray(read_rgb(strawberry_image)),
                                                                    threshold=0.0)
    per_class = np.bincount(detections.class_id, minlength=4)  # type: ignore[union-attr]
    assert per_class[3] > 0  # the spare class is among them, so a collision would show
    used = [a["category_id"] for a in predictions["annotations"]]
    assert [used.count(c) for c in [*expected, spare]] == per_class.tolist() and len(used) == per_class.sum()
    if ids is not None:
        # The dataset's own ground truth (same image, one box per class, its ids) scores the predictions.
        gt = {"images": predictions["images"], "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": c, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}
            for k, c in enumerate(ids)], "categories": [{"id": c, "name": f"c{c}"} for c in ids]}
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        results = [a for a in predictions["annotations"] if a["category_id"] in ids]
        assert results and coco.loadRes(results).getCatIds() == ids  # every prediction's id is the dataset's


def test_no_detection_says_why(tiny_stage2_checkpoint: Path, strawberry_image: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--weights", str(tiny_stage2_checkpoint), "--source", str(strawberry_image), "--output",
                 str(tmp_path), "--threshold", "0.999"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("no detection above 0.999 in any image: the model's scores sit below the threshold")
