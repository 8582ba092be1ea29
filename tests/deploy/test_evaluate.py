"""``python -m rfdetr.evaluate``: COCO mAP of any predictor through its own predict(); checkpoint and export agree."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from rfdetr import evaluate as evaluate_cli
from rfdetr.data.coco import CocoDetection
from rfdetr.deploy.runtime.detections import Detections
from rfdetr.deploy.runtime.evaluate import evaluate_predictor, label_mapping
from rfdetr.detr import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


class GroundTruthPredictor:
    """Answers every image with its ground truth, recognised by its pixels; labels indexed by ``class_names``."""

    masks = True

    def __init__(self, root: Path, split: str, class_names: list[str]) -> None:
        data = CocoDetection(root, split, masks=True)
        self.class_names = class_names
        self.by_pixels = {}
        for i in range(len(data)):
            image, target = data.load_sample(i)
            key = hashlib.sha1(image.permute(1, 2, 0).contiguous().numpy().tobytes()).hexdigest()
            names = [data.class_names[int(label)] for label in target["labels"]]
            self.by_pixels[key] = (target["boxes"].numpy(), names, target["masks"].numpy())

    def predict(self, image: np.ndarray, threshold: float = 0.5) -> Detections:
        boxes, names, masks = self.by_pixels[hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()]
        ids = np.array([self.class_names.index(n) for n in names], dtype=np.int64)
        return Detections(boxes, np.ones(len(names)), ids, names, masks)


def test_ground_truth_scores_one_with_classes_matched_by_name(synthetic_dir: Path) -> None:
    predictor = GroundTruthPredictor(synthetic_dir, "valid", ["triangle", "circle", "square"])
    result = evaluate_predictor(predictor, synthetic_dir, "valid", progress=False)
    assert result["images"] == 8
    for iou_type in ("bbox", "segm"):
        assert result[iou_type]["mAP"] == pytest.approx(1.0)
        assert set(result[iou_type]["per_class_AP"]) == {"circle", "square", "triangle"}
    assert label_mapping(["triangle", "circle", "square"], ["circle", "square", "triangle"]) == [2, 0, 1]
    assert label_mapping(["class_0", "class_1"], ["a", "b", "c"]) == [0, 1]


def test_command_on_a_checkpoint_and_its_onnx_export(
    tiny_stage2_checkpoint: Path, synthetic_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = evaluate_cli.get_args_parser()
    out_ckpt, out_onnx = tmp_path / "ckpt.json", tmp_path / "onnx.json"
    argv = ["--weights", str(tiny_stage2_checkpoint), "--dataset", str(synthetic_dir), "--output", str(out_ckpt),
            "--no_progress"]
    assert evaluate_cli.main(parser.parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert "IoU metric: bbox" in printed and "IoU metric: segm" in printed
    assert "(AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = -1" not in printed
    onnx_path = load_model(tiny_stage2_checkpoint, device="cpu").export(tmp_path)
    argv = ["--weights", str(onnx_path), "--dataset", str(synthetic_dir), "--output", str(out_onnx), "--no_progress"]
    assert evaluate_cli.main(parser.parse_args(argv)) == 0
    ours, exported = json.loads(out_ckpt.read_text()), json.loads(out_onnx.read_text())
    for iou_type in ("bbox", "segm"):
        assert exported[iou_type]["stats"] == pytest.approx(ours[iou_type]["stats"], abs=1e-3)


def test_command_errors(tmp_path: Path, synthetic_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = evaluate_cli.get_args_parser()
    assert evaluate_cli.main(parser.parse_args(["--weights", str(tmp_path / "x.pth"), "--dataset", "d"])) == 2
    assert "rfdetr.evaluate: error:" in capsys.readouterr().err
    junk = tmp_path / "model.onnx"
    junk.write_bytes(b"not a model")
    assert evaluate_cli.main(parser.parse_args(["--weights", str(junk), "--dataset", str(synthetic_dir)])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.onnx" in err and "cannot load it as an ONNX model" in err
