"""YOLO datasets (rfdetr.data.yolo): both layouts read like the same data in COCO form, segm mAP from the polygons
equals COCO's, every command that reads a dataset takes one, and each bad input is one line naming the file and line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import train_detector_stage1
import train_seg_single_stage
import train_seg_stage2
import validate_setup
from rfdetr import evaluate as evaluate_cli
from rfdetr import export as export_cli
from rfdetr.checkpoint import load_checkpoint_file
from rfdetr.checkpoint.surgery import dataset_class_names
from rfdetr.data.annotations import check_dataset, dataset_format, split_exists
from rfdetr.data.coco import CocoDetection
from rfdetr.data.coco_eval import STAT_NAMES, CocoEvaluator
from rfdetr.data.synthetic import CLASS_NAMES, SyntheticSpec, write_synthetic_dataset
from rfdetr.data.yolo import COORD_SLACK, YoloDatasetError, parse_label_text
from rfdetr.deploy.export.calibration import calibration_arrays, calibration_files
from rfdetr.deploy.export.report import report_path
from tests.data.yolo_convert import coco_to_yolo

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--workers", "0", "--batch", "2", "--accum", "1", "--multi_scale", "0", "--augment", "0", "--seed", "3",
        "--tensorboard", "0", "--epochs", "1"]
NAMES = list(CLASS_NAMES)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic COCO dataset with polygon masks only (they convert to YOLO-seg labels without loss)."""
    spec = SyntheticSpec(splits=(("train", 4), ("valid", 3), ("test", 2)), width=64, height=64, max_objects=2, seed=5,
                         mask_styles=(0,))
    return write_synthetic_dataset(tmp_path_factory.mktemp("coco"), spec)


@pytest.fixture(scope="module")
def yolo_seg(coco_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same data as YOLO-seg, Roboflow layout (train/images, valid/labels ...), names as a list."""
    return coco_to_yolo(coco_root, tmp_path_factory.mktemp("yolo_seg"), "roboflow", masks=True)


@pytest.fixture(scope="module")
def yolo_det(coco_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same data as YOLO detection (box lines), Ultralytics layout (images/train, labels/val ...), names as a
    mapping."""
    return coco_to_yolo(coco_root, tmp_path_factory.mktemp("yolo_det"), "ultralytics", masks=False,
                        names_as_mapping=True)


def _by_file(dataset: CocoDetection) -> dict[str, int]:
    return {r.path.name: i for i, r in enumerate(dataset.records)}


@pytest.mark.parametrize("split", ["train", "valid", "val", "test"])
def test_both_layouts_read_like_the_coco_data(coco_root: Path, yolo_seg: Path, yolo_det: Path, split: str) -> None:
    coco = CocoDetection(coco_root, split, masks=True)
    seg = CocoDetection(yolo_seg, split, masks=True)
    det = CocoDetection(yolo_det, split)
    assert dataset_format(yolo_seg) == dataset_format(yolo_det) == "yolo" and dataset_format(coco_root) == "coco"
    assert seg.class_names == det.class_names == coco.class_names == NAMES
    assert seg.label_to_category_id == det.label_to_category_id == [0, 1, 2]
    assert len(seg) == len(det) == len(coco)
    index = _by_file(coco)
    for i, rec in enumerate(seg.records):
        _, target = seg.load_sample(i)
        _, expected = coco.load_sample(index[rec.path.name])
        assert torch.equal(target["labels"], expected["labels"])
        assert torch.equal(target["masks"], expected["masks"])  # the polygons rasterise to the same masks
    for rec in det.records:
        # Box lines give back the COCO boxes (up to float rounding of the normalised values).
        np.testing.assert_allclose(rec.boxes, coco.records[index[rec.path.name]].boxes, atol=1e-4)


def test_background_images_and_box_lines_have_no_mask(yolo_seg: Path, tmp_path: Path) -> None:
    root = shutil.copytree(yolo_seg, tmp_path / "d")
    labels = sorted((root / "train" / "labels").glob("*.txt"))
    labels[0].unlink()  # an image without a label file: background
    labels[1].write_text("1 0.5 0.5 0.25 0.25\n")  # a box line: no mask
    plain = CocoDetection(root, "train")
    assert len(plain) == 4 and len(plain.records[0].labels) == 0
    masked = CocoDetection(root, "train", masks=True, skip_images_without_masks=True)
    assert len(masked) == 2
    assert masked.stats["annotations without a mask dropped"] == 1


def _predictions(coco: CocoDetection, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Per file name: each ground-truth object shifted a little (a spread of IoUs), plus a false positive."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, rec in enumerate(coco.records):
        _, target = coco.load_sample(i)
        masks, boxes = target["masks"].clone(), target["boxes"].as_subclass(torch.Tensor).clone()
        shifts = rng.integers(-3, 4, size=(len(masks), 2))
        for k, (dy, dx) in enumerate(shifts.tolist()):
            masks[k] = torch.roll(masks[k], shifts=(dy, dx), dims=(0, 1))
            boxes[k] += torch.tensor([dx, dy, dx, dy], dtype=torch.float32)
        fp_mask = torch.zeros(1, rec.height, rec.width, dtype=torch.bool)
        fp_mask[0, :8, :8] = True
        out[rec.path.name] = {
            "boxes": torch.cat([boxes, torch.tensor([[0.0, 0.0, 8.0, 8.0]])]),
            "scores": torch.from_numpy(rng.uniform(0.1, 1.0, len(masks) + 1)).float(),
            "labels": torch.cat([target["labels"], torch.tensor([int(rng.integers(3))])]),
            "masks": torch.cat([masks, fp_mask]),
        }
    return out


def _evaluate(dataset: CocoDetection, predictions: dict[str, dict[str, torch.Tensor]], iou_types: tuple[str, ...]
              ) -> dict:
    evaluator = CocoEvaluator.from_dataset(dataset, iou_types=iou_types)
    evaluator.update({rec.image_id: predictions[rec.path.name] for rec in dataset.records})
    return evaluator.evaluate()


def test_segm_map_from_the_polygons_equals_the_coco_data(coco_root: Path, yolo_seg: Path, yolo_det: Path) -> None:
    coco = CocoDetection(coco_root, "train", masks=True)
    predictions = _predictions(coco)
    expected = _evaluate(coco, predictions, ("bbox", "segm"))
    got = _evaluate(CocoDetection(yolo_seg, "train", masks=True), predictions, ("segm",))
    assert 0.1 < expected["segm"]["mAP"] < 0.95  # neither trivial nor empty: the comparison can fail
    for key in ("stats", "per_class_AP", "per_class_AP50"):  # all 12 COCO numbers (areas too), and per class
        assert got["segm"][key] == expected["segm"][key], key
    # Box lines: the same boxes, the same bbox mAP.
    boxes = _evaluate(CocoDetection(yolo_det, "train"), predictions, ("bbox",))
    for key in ("mAP", "mAP50", "mAP75"):
        assert boxes["bbox"][key] == pytest.approx(expected["bbox"][key], abs=1e-12), key
    # An empty segm ground truth (rfdetr 1.4.1's YOLO shim) would score every mask a miss; ours does not.
    assert got["segm"]["mAP50"] > 0.5


def test_surgery_calibration_and_dataset_checks_take_yolo(yolo_seg: Path, yolo_det: Path) -> None:
    assert dataset_class_names(yolo_seg) == dataset_class_names(yolo_det) == NAMES
    assert check_dataset(yolo_det) == yolo_det and split_exists(yolo_det, "valid") and split_exists(yolo_seg, "val")
    files = calibration_files(yolo_det, 2)
    assert len(files) == 2 and all(f.parent == yolo_det / "images" / "train" for f in files)
    arrays = calibration_arrays(files, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert [a.shape for a in arrays] == [(1, 3, 64, 64)] * 2
    assert calibration_files(yolo_seg, 3)[0].parent == yolo_seg / "train" / "images"
    assert calibration_files(yolo_seg / "valid", 3)[0].parent == yolo_seg / "valid" / "images"  # a split folder


def _validate(dataset: Path, *extra: str) -> int:
    return validate_setup.main(validate_setup.get_args_parser().parse_args(
        ["--dataset", str(dataset), "--skip_env", *extra]))


def test_validate_setup_passes_yolo_and_asks_polygons_for_stage2(yolo_seg: Path, yolo_det: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert _validate(yolo_seg, "--stage", "2") == 0
    out = capsys.readouterr().out
    assert "Dataset summary (YOLO)" in out and "'polygon':" in out
    assert _validate(yolo_det, "--stage", "1") == 0
    assert _validate(yolo_det, "--stage", "2") == 1
    out = capsys.readouterr().out
    assert "has no mask -> label the object with a polygon" in out


# ------------------------------------------------------------------------------------------------------------------
# Training, evaluation: every mode on YOLO data
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage1_run(yolo_det: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage1")
    argv = [*FAST, "--size", "tiny", "--pretrained", "none", "--dataset", str(yolo_det), "--output", str(out)]
    assert train_detector_stage1.main(train_detector_stage1.get_args_parser().parse_args(argv)) == 0
    (run,) = out.iterdir()
    return run


def test_stage1_on_yolo_detection(stage1_run: Path) -> None:
    results = (stage1_run / "results.json").read_text()
    assert (stage1_run / "checkpoint_best_total.pth").is_file() and "test" in results  # the test split was found
    ckpt = load_checkpoint_file(stage1_run / "checkpoint_best_total.pth")
    assert list(ckpt["category_ids"]) == [0, 1, 2]


def test_stage2_and_evaluate_on_yolo_seg(stage1_run: Path, yolo_seg: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    argv = [*FAST, "--size", "tiny", "--dataset", str(yolo_seg), "--output", str(out), "--stage1_run", str(stage1_run)]
    assert train_seg_stage2.main(train_seg_stage2.get_args_parser().parse_args(argv)) == 0
    (run,) = out.iterdir()
    assert "segm" in (run / "results.json").read_text()
    result_file = tmp_path / "eval.json"
    args = evaluate_cli.get_args_parser().parse_args(
        ["--weights", str(run / "checkpoint_best_total.pth"), "--dataset", str(yolo_seg), "--split", "val",
         "--output", str(result_file), "--size", "tiny", "--device", "cpu", "--no_progress"])
    results = evaluate_cli.run_evaluate(args)
    assert results["images"] == 3 and "segm" in results and 0.0 <= results["segm"]["mAP"] <= 1.0
    # INT8 export calibrated on the YOLO folder, its report scored on the YOLO valid split.
    argv = ["--weights", str(run / "checkpoint_best_total.pth"), "--size", "tiny", "--output", str(tmp_path / "x"),
            "--int8", "--calibration", str(yolo_seg), "--calibration_images", "2", "--dataset", str(yolo_seg),
            "--split", "val"]
    assert export_cli.main(export_cli.get_args_parser().parse_args(argv)) == 0
    report = json.loads(report_path(tmp_path / "x" / "inference_model_int8.onnx").read_text())
    assert set(report["accuracy"]["exported"]) == {"bbox", "segm"}
    assert not list(yolo_seg.rglob("*.json"))  # nothing was written into the dataset


def test_single_stage_on_yolo_seg(yolo_seg: Path, tmp_path: Path) -> None:
    argv = [*FAST, "--size", "tiny", "--mask_head", "nano", "--pretrained", "none", "--dataset", str(yolo_seg),
            "--output", str(tmp_path)]
    assert train_seg_single_stage.main(train_seg_single_stage.get_args_parser().parse_args(argv)) == 0
    (run,) = tmp_path.iterdir()
    assert "segm" in (run / "results.json").read_text()


# ------------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and line, exit 2 from the scripts, every problem listed by validate_setup.py
# ------------------------------------------------------------------------------------------------------------------


def _first_label(root: Path) -> Path:
    return sorted((root / "train" / "labels").glob("*.txt"))[0]


Maker = Callable[[Path], list[str]]


def _bad_line(text: str, message: str) -> Maker:
    """Append ``text`` to a training label file; the error must name the file, the line and ``message``."""
    def apply(root: Path) -> list[str]:
        path = _first_label(root)
        path.write_text(path.read_text() + text + "\n")
        return [f"{path}:{len(path.read_text().splitlines())}: ", message]
    return apply


def _orphan(root: Path) -> list[str]:
    path = root / "train" / "labels" / "lonely.txt"
    path.write_text("0 0.5 0.5 0.1 0.1\n")
    return [f"{path}: label file without an image", "-> add the image lonely.* to"]


def _yaml(text: str, message: str) -> Maker:
    def apply(root: Path) -> list[str]:
        (root / "data.yaml").write_text(text)
        return [str(root / "data.yaml"), message]
    return apply


def _no_yaml(root: Path) -> list[str]:
    (root / "data.yaml").unlink()
    return [f"{root}: no data.yaml", "-> a YOLO dataset needs data.yaml"]


BAD: dict[str, Maker] = {
    "class id outside names": _bad_line("3 0.5 0.5 0.2 0.2", "class id 3 is not in data.yaml names (ids 0..2)"),
    "odd number of coordinates": _bad_line("0 0.1 0.1 0.5 0.1 0.5", "5 polygon coordinates, an odd number"),
    "too few values": _bad_line("0 0.1 0.1", "a polygon at least 3 x y points"),
    "value outside [0, 1]": _bad_line("1 0.1 0.1 0.9 0.1 0.9 1.5", "value 1.5 is outside [0, 1]"),
    "not a number": _bad_line("0 0.5 abc 0.2 0.2", "is not numbers"),
    "label without image": _orphan,
    "names with a gap": _yaml("names: {0: a, 2: c}\n", "are not 0..1"),
    "names missing": _yaml("nc: 3\n", "'names' is missing"),
    "not YAML": _yaml("names: [a, b\n", "not valid YAML"),
    "nc disagrees": _yaml("nc: 4\nnames: [circle, square, triangle]\n", "nc is 4 but 'names' has 3"),
    "no data.yaml": _no_yaml,
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_with_the_file_and_exit_2(case: str, yolo_seg: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    root = shutil.copytree(yolo_seg, tmp_path / "d")
    expected = BAD[case](root)
    argv = [*FAST, "--size", "tiny", "--pretrained", "none", "--dataset", str(root), "--output", str(tmp_path / "r")]
    assert train_detector_stage1.main(train_detector_stage1.get_args_parser().parse_args(argv)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(part in lines[0] for part in expected) and "->" in lines[0], lines[0]  # file (and line), what, fix
    assert _validate(root) == 1
    out = capsys.readouterr().out
    assert any(line.startswith("FAIL") and all(part in line for part in expected) for line in out.splitlines()), out


def test_validate_setup_counts_every_bad_line(yolo_seg: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = shutil.copytree(yolo_seg, tmp_path / "d")
    path = _first_label(root)
    path.write_text(path.read_text() + "".join(f"{k} 0.5 0.5 0.2 0.2\n" for k in range(3, 8)))
    assert _validate(root, "--max_lines", "2") == 1
    out = capsys.readouterr().out
    assert sum(line.startswith("FAIL") and "class id" in line and ".txt:" in line for line in out.splitlines()) == 2
    assert "... and 3 more 'class id outside names' problems not shown (5 in all)" in out


def test_coordinate_slack() -> None:
    inside = f"0 0.5 0.5 {1 + COORD_SLACK / 2!r} 0.5"
    objects, problems = parse_label_text(Path("a.txt"), inside, 1, 100, 50)
    assert not problems and objects[0]["bbox"] == [0.0, 12.5, 100.0, 25.0]  # clipped to the image
    _, problems = parse_label_text(Path("a.txt"), f"0 0.5 0.5 {1 + 10 * COORD_SLACK!r} 0.5", 1, 100, 50)
    assert [p.kind for p in problems] == ["value outside [0, 1]"]


def test_missing_split_is_named(yolo_det: Path, tmp_path: Path) -> None:
    root = shutil.copytree(yolo_det, tmp_path / "d")
    shutil.rmtree(root / "images" / "val")
    with pytest.raises(YoloDatasetError, match="no valid split -> expected .*images/val"):
        CocoDetection(root, "valid")
    with pytest.raises(FileNotFoundError, match="no valid split"):
        check_dataset(root)


def test_data_yaml_entries_and_roboflow_parent_paths(yolo_det: Path, yolo_seg: Path, tmp_path: Path) -> None:
    # An Ultralytics dataset with its own folder names, found through data.yaml's entries (relative to 'path').
    root = shutil.copytree(yolo_det, tmp_path / "custom")
    for kind in ("images", "labels"):
        (root / kind / "train").rename(root / kind / "train2017")
    (root / "data.yaml").write_text("path: .\nnames: [circle, square, triangle]\ntrain: images/train2017\n"
                                    "val: images/val\n")
    assert len(CocoDetection(root, "train")) == 4
    # Roboflow's "../train/images" must not pick up a neighbouring folder of the same name.
    decoy = tmp_path / "train" / "images"
    decoy.mkdir(parents=True)
    shutil.copy(next((yolo_seg / "train" / "images").iterdir()), decoy / "decoy.jpg")
    seg = shutil.copytree(yolo_seg, tmp_path / "seg")
    assert [r.path.parent for r in CocoDetection(seg, "train").records] == [seg.absolute() / "train" / "images"] * 4


@pytest.mark.parametrize("layout", ["roboflow", "ultralytics"])
def test_strawberry_as_yolo_scores_like_its_coco_export(strawberry_dir: Path, tmp_path: Path, layout: str) -> None:
    """A real Roboflow export (640x640, single-part polygons) rewritten as YOLO-seg: the same segm numbers."""
    coco = CocoDetection(strawberry_dir, "valid", masks=True)
    yolo = CocoDetection(coco_to_yolo(strawberry_dir, tmp_path / "y", layout), "valid", masks=True)
    assert yolo.class_names == coco.class_names and len(yolo) == len(coco)
    predictions = _predictions(coco)
    expected, got = _evaluate(coco, predictions, ("segm",)), _evaluate(yolo, predictions, ("segm",))
    assert 0.1 < expected["segm"]["mAP"] < 0.95
    # Every number over all sizes; the small/medium/large ones may differ: Roboflow's 'area' is not the polygon's
    # pixel area, which is what the YOLO reader computes (COCO's definition).
    overall = [STAT_NAMES.index(k) for k in ("mAP", "mAP50", "mAP75", "AR1", "AR10", "AR_max")]
    assert [got["segm"]["stats"][i] for i in overall] == [expected["segm"]["stats"][i] for i in overall]
    assert got["segm"]["per_class_AP"] == expected["segm"]["per_class_AP"]
