"""The run folder's pictures and tables (rfdetr.train.plots): every file after a tiny run, and what each holds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import train_detector_stage1
import train_seg_single_stage
import train_seg_stage2
from rfdetr.train.plots.analysis import confusion_matrix
from rfdetr.util.loggers import read_jsonl
from tests.tolerances import float64_means_bound

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--workers", "0", "--batch", "2", "--accum", "1", "--multi_scale", "0", "--seed", "3",
        "--tensorboard", "0", "--early_stopping", "0"]
# Every file the run folder gains from the plots; a segmentation run has all of them.
BOX_FILES = {"results.csv", "results.png", "labels.png", "pr_curve_box.png", "pr_curve_box.csv", "f1_curve_box.png",
             "confusion_matrix.png", "confusion_matrix.csv", "per_class.csv", "train_batch0.jpg", "train_batch1.jpg",
             "train_batch2.jpg", "val_predictions_0.jpg", "val_predictions_1.jpg", "val_predictions_2.jpg",
             "val_predictions_3.jpg"}
MASK_FILES = {"pr_curve_mask.png", "pr_curve_mask.csv", "f1_curve_mask.png"}


def _run(script: object, dataset: Path, output: Path, *extra: str) -> Path:
    weights = [] if script is train_seg_stage2 else ["--pretrained", "none"]  # stage 2 reads its detector's
    argv = [*FAST, *weights, "--dataset", str(dataset), "--output", str(output), *extra]
    assert script.main(script.get_args_parser().parse_args(argv)) == 0  # type: ignore[attr-defined]
    (run_dir,) = output.iterdir()
    return run_dir


@pytest.fixture(scope="module")
def seg_run(four_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """seg-tiny single stage on the 4 images, long enough that the model finds objects (AP50 > 0)."""
    return _run(train_seg_single_stage, four_images, tmp_path_factory.mktemp("runs"), "--size", "seg-tiny",
                "--lr", "1e-3", "--lr_encoder", "1e-3", "--augment", "1", "--epochs", "8")


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_every_file_exists_and_decodes(seg_run: Path) -> None:
    names = {p.name for p in seg_run.iterdir()}
    assert BOX_FILES | MASK_FILES <= names, sorted(BOX_FILES | MASK_FILES - names)
    for name in sorted(BOX_FILES | MASK_FILES):
        if name.endswith((".png", ".jpg")):
            image = cv2.imread(str(seg_run / name))
            assert image is not None and min(image.shape[:2]) >= 200, name


def test_results_csv_holds_every_logged_number(seg_run: Path) -> None:
    records = read_jsonl(seg_run / "log.jsonl")
    rows = _csv(seg_run / "results.csv")
    assert [int(r["epoch"]) for r in rows] == [r["epoch"] for r in records]
    scalars = {k for r in records for k, v in r.items() if k.startswith(("train_", "val_", "ema_val_"))
               and isinstance(v, float)}
    assert scalars <= set(rows[0]) and {"train_loss_mask_dice", "val_segm_mAP", "ema_val_bbox_mAP50"} <= scalars
    for row, record in zip(rows, records, strict=True):
        assert all(float(row[k]) == record[k] for k in scalars if k in record)  # exact: written with repr


def test_drawn_pr_curve_mean_is_the_evaluators_ap50(seg_run: Path) -> None:
    results = json.loads((seg_run / "results.json").read_text())
    records = {r["epoch"]: r for r in read_jsonl(seg_run / "log.jsonl")}
    for iou_type, kind in (("bbox", "box"), ("segm", "mask")):
        chosen = results["f1"][iou_type]
        prefix = "ema_val" if chosen["model"] == "ema" else "val"
        printed = records[chosen["epoch"]][f"{prefix}_{iou_type}_mAP50"]
        curve = np.array([float(r["all"]) for r in _csv(seg_run / f"pr_curve_{kind}.csv")])
        assert len(curve) == 101
        assert printed > 0, "the run must find objects for this comparison to mean something"
        assert abs(curve.mean() - printed) <= float64_means_bound(101 * 3), (kind, curve.mean(), printed)
        # the curves describe the weights of checkpoint_best_total.pth
        assert chosen["model"] == ("ema" if results["best_total_source"].endswith("ema.pth") else "regular")


def test_f1_threshold_and_per_class_table(seg_run: Path) -> None:
    results = json.loads((seg_run / "results.json").read_text())
    assert results["threshold"] == results["f1"]["segm"]["threshold"]  # segmentation runs: the mask threshold
    assert 0 < results["threshold"] < 1 and results["f1"]["segm"]["f1"] > 0
    rows = _csv(seg_run / "per_class.csv")
    assert [(r["type"], r["class"]) for r in rows] == [(t, c) for t in ("box", "mask")
                                                       for c in ("circle", "square", "triangle", "all")]
    for row in rows:
        precision, recall, f1 = float(row["precision"]), float(row["recall"]), float(row["f1"])
        if row["class"] != "all" and precision + recall > 0:
            assert f1 == pytest.approx(2 * precision * recall / (precision + recall), rel=1e-12)
    final = read_jsonl(seg_run / "log.jsonl")
    box_all = next(r for r in rows if r["type"] == "box" and r["class"] == "all")
    chosen = results["f1"]["bbox"]
    record = next(r for r in final if r["epoch"] == chosen["epoch"])
    prefix = "ema_val" if chosen["model"] == "ema" else "val"
    assert float(box_all["AP50:95"]) == pytest.approx(record[f"{prefix}_bbox_mAP"], abs=float64_means_bound(1010 * 3))


def test_confusion_counts_every_object_once(seg_run: Path) -> None:
    rows = list(csv.reader((seg_run / "confusion_matrix.csv").open(encoding="utf-8")))
    assert rows[0] == ["predicted \\ true", "circle", "square", "triangle", "background"]
    matrix = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    instances = {r["class"]: int(r["instances"]) for r in _csv(seg_run / "per_class.csv") if r["type"] == "box"}
    # each ground-truth object is either matched (one predicted-class row) or missed (the background row)
    assert matrix[:, :3].sum(axis=0).tolist() == [instances[c] for c in ("circle", "square", "triangle")]
    assert matrix[3, 3] == 0


def test_confusion_matrix_hand_count() -> None:
    """Two images, three classes, threshold 0.5; background is index 3 (rows: predicted, columns: true)."""
    box = np.array
    gt_boxes = [box([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]), box([[0, 0, 10, 10], [40, 40, 50, 50]])]
    gt_labels = [box([0, 1, 2]), box([1, 0])]
    det_boxes = [box([[0, 0, 10, 10],       # class 0 on the class-0 object: right                -> [0, 0]
                      [20, 20, 30, 30],     # class 2 on the class-1 object: confused             -> [2, 1]
                      [100, 100, 110, 110],  # class 1 on nothing                                  -> [1, bg]
                      [0, 0, 10, 10],       # class 0 again on the already matched object         -> [0, bg]
                      [50, 50, 60, 60]]),   # below the score threshold: the class-2 object missed -> [bg, 2]
                 box([[0, 0, 10, 14],       # IoU 100/140 with the class-1 object                 -> [1, 1]
                      [45, 40, 55, 50]])]   # IoU 50/150 with the class-0 object: FP and a miss   -> [0, bg], [bg, 0]
    det_labels = [box([0, 2, 1, 0, 2]), box([1, 0])]
    det_scores = [box([0.9, 0.8, 0.7, 0.6, 0.1]), box([0.95, 0.7])]
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = expected[2, 1] = expected[1, 3] = expected[3, 2] = expected[1, 1] = expected[3, 0] = 1
    expected[0, 3] = 2
    got = confusion_matrix(gt_boxes, gt_labels, det_boxes, det_labels, det_scores, 3, score_threshold=0.5)
    assert got.tolist() == expected.tolist()
    # the highest-IoU pair wins: a better-placed second detection takes the object from a worse first one
    got = confusion_matrix([box([[0, 0, 10, 10]])], [box([1])], [box([[0, 0, 10, 13], [0, 0, 10, 10]])],
                           [box([0, 1])], [box([0.9, 0.8])], 3, score_threshold=0.5)
    assert got[1, 1] == 1 and got[0, 3] == 1 and got.sum() == 2


def test_stage1_and_stage2_write_their_files(four_images: Path, tiny_stage2_checkpoint: Path, tmp_path: Path) -> None:
    detector = _run(train_detector_stage1, four_images, tmp_path / "stage1", "--size", "tiny", "--epochs", "1")
    names = {p.name for p in detector.iterdir()}
    assert BOX_FILES <= names and not MASK_FILES & names  # a detector has no masks to plot
    stage2 = _run(train_seg_stage2, four_images, tmp_path / "stage2", "--size", "tiny", "--epochs", "1",
                  "--checkpoint", str(tiny_stage2_checkpoint))
    assert BOX_FILES | MASK_FILES <= {p.name for p in stage2.iterdir()}


def test_plots_off_leaves_a_bare_folder(four_images: Path, tmp_path: Path) -> None:
    run_dir = _run(train_detector_stage1, four_images, tmp_path, "--size", "tiny", "--epochs", "1", "--plots", "0")
    names = {p.name for p in run_dir.iterdir()}
    assert not (BOX_FILES | MASK_FILES) & names and "checkpoint_best_total.pth" in names
    assert "threshold" not in json.loads((run_dir / "results.json").read_text())


def test_f1_curve_from_the_evaluations_matches(tmp_path: Path) -> None:
    """One image, two objects, three detections: 0.9 hits, 0.8 misses, 0.35 hits (hand-computed F1 per threshold)."""
    from rfdetr.data.coco_eval import CocoEvaluator
    from rfdetr.train.plots.analysis import pr_curves, score_curves

    gt = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"}],
          "categories": [{"id": 1, "name": "thing"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400,
                           "iscrowd": 0}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    evaluator = CocoEvaluator(path, [1])
    evaluator.update({1: {"boxes": np.array([[0, 0, 20, 20], [80, 0, 99, 20], [50, 50, 70, 70]], dtype=np.float32),
                          "scores": np.array([0.9, 0.8, 0.35], dtype=np.float32), "labels": np.array([0, 0, 0])}})
    stats = evaluator.evaluate()["bbox"]
    curves = score_curves(evaluator.coco_evals["bbox"])
    at = {t: int(np.searchsorted(curves.thresholds, t)) for t in (0.2, 0.5, 0.85, 0.95)}
    assert curves.f1[0, at[0.2]] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))  # all three kept: P 2/3, R 1
    assert curves.f1[0, at[0.5]] == pytest.approx(0.5)  # 0.9 and 0.8 kept: P 1/2, R 1/2
    assert curves.f1[0, at[0.85]] == pytest.approx(2 / 3)  # 0.9 kept: P 1, R 1/2
    assert curves.f1[0, at[0.95]] == 0.0
    # the plateau of the best F1 (0.8) runs from 0 to the lowest kept score: its highest threshold is recommended
    grid = float(curves.thresholds[1] - curves.thresholds[0])
    lowest_kept = float(np.float32(0.35))  # the evaluator keeps scores as float32
    assert curves.f1_mean[curves.best] == pytest.approx(0.8) and lowest_kept - grid < curves.threshold <= lowest_kept
    assert pr_curves(evaluator.coco_evals["bbox"]).mean.mean() == pytest.approx(stats["mAP50"],
                                                                                abs=float64_means_bound(101))


def test_without_matplotlib_the_charts_are_skipped_with_one_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import importlib.util
    from types import SimpleNamespace

    from rfdetr.train.plots import RunPlots

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name))
    plots = RunPlots(tmp_path, SimpleNamespace(class_names=["a"], train_set=None, val_set=None), enabled=True)
    plots.labels()
    assert not plots.charts and not (tmp_path / "labels.png").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "pip install matplotlib" in warnings[0] and "--plots 0" in warnings[0]
