"""``make demo``: the trained model is right on its own shapes, and the picture shows it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from rfdetr.data.coco import CocoDetection
from rfdetr.data.synthetic import write_synthetic_dataset
from rfdetr.demo import DEMO_DATA
from rfdetr.deploy.runtime.evaluate import evaluate_predictor
from rfdetr.detr import load_model

# What the demo must show on every host (issue #26), with the smallest value measured on the hosts seen beside each
# bound in the README's demo section: every shape in the four pictured test images found, labelled right, its mask
# following the edges (mask IoU with the ground truth); segm AP50 on 256 fresh images of the demo's generator.
PICTURED_IMAGES = 4
PICTURED_MASK_IOU = 0.75
HELD_OUT_IMAGES = 256
HELD_OUT_SEED = 11  # not the demo's own seed (0) nor the starting weights' (1000)
HELD_OUT_SEGM_AP50 = 0.7


def _match_objects(model: object, data: CocoDetection, indices: range, threshold: float
                   ) -> list[tuple[int, str, str | None, float]]:
    """(image index, true class, found class or None, mask IoU) per ground-truth object: the detection above
    ``threshold`` whose box overlaps it most (box IoU >= 0.5), as a person looking at the picture would pair them."""
    rows = []
    for i in indices:
        image, target = data.load_sample(i)
        det = model.predict(image.permute(1, 2, 0).numpy(), threshold=threshold)  # type: ignore[attr-defined]
        boxes = target["boxes"].as_subclass(torch.Tensor).float()
        ious = box_iou(boxes, torch.from_numpy(det.xyxy)) if len(det) else torch.zeros(len(boxes), 0)
        for g, label in enumerate(target["labels"].tolist()):
            truth = data.class_names[int(label)]
            if not len(det) or float(ious[g].max()) < 0.5:
                rows.append((i, truth, None, 0.0))
                continue
            j = int(ious[g].argmax())
            gt, mask = target["masks"][g].numpy(), det.mask[j]
            rows.append((i, truth, det.class_name[j], float((gt & mask).sum() / (gt | mask).sum())))
    return rows


def test_demo_pictured_shapes_are_found_labelled_and_masked(demo_run: Path) -> None:
    """The four test images in prediction.png: every shape found above the picture's threshold, with its true class,
    and a mask on its edges (IoU >= 0.75 for each one, not on average)."""
    model = load_model(demo_run / "model.pth", device="cpu")
    data = CocoDetection(demo_run / "dataset", "test", masks=True)
    rows = _match_objects(model, data, range(PICTURED_IMAGES), threshold=0.4)
    assert len(rows) >= PICTURED_IMAGES
    wrong = [r for r in rows if r[2] != r[1] or r[3] < PICTURED_MASK_IOU]
    assert not wrong, f"(image, true class, found class, mask IoU) below the bar: {wrong} of {rows}"


def test_demo_scores_on_fresh_images(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """On 256 new images of the demo's generator (~320 objects; the 16-image test split moves by points per image):
    segm AP50, and nearly every object found, labelled right, most masks on the edges. Also the demo's own printed
    test-split scores.

    Bars from the spread of four demo variants on the Zen 4 host (1 or 2 training threads, stage-1 lr 1e-4 or 5e-4,
    stage 2 for 10 or 20 epochs): found 0.963-0.982, right 0.981-0.984, mask IoU >= 0.75 for 0.809-0.831 of the
    found, segm AP50 0.918-0.928; each bar sits below the lowest by more than 3 binomial standard deviations of ~320
    objects (sd 0.01 / 0.008 / 0.022)."""
    stage2 = next((demo_run / "stage2").iterdir())
    test = json.loads((stage2 / "results.json").read_text())["test"]
    assert test["segm"]["mAP50"] >= HELD_OUT_SEGM_AP50 and test["bbox"]["mAP50"] >= 0.8, test
    held_out = write_synthetic_dataset(tmp_path_factory.mktemp("demo_held_out"), dataclasses.replace(
        DEMO_DATA, splits=(("valid", HELD_OUT_IMAGES),), seed=HELD_OUT_SEED))
    model = load_model(demo_run / "model.pth", device="cpu")
    results = evaluate_predictor(model, held_out, "valid", 100, progress=False)
    assert results["images"] == HELD_OUT_IMAGES
    assert results["segm"]["mAP50"] >= HELD_OUT_SEGM_AP50, results["segm"]
    data = CocoDetection(held_out, "valid", masks=True)
    rows = _match_objects(model, data, range(len(data)), threshold=0.4)
    found = [r for r in rows if r[2] is not None]
    assert len(found) >= 0.9 * len(rows), (len(found), len(rows))
    assert sum(r[2] == r[1] for r in found) >= 0.95 * len(found)
    assert np.mean([r[3] >= PICTURED_MASK_IOU for r in found]) >= 0.7


def test_demo_picture_is_large_and_drawn(demo_run: Path) -> None:
    picture = np.asarray(Image.open(demo_run / "prediction.png"))
    assert picture.shape[0] >= 512 and picture.shape[1] >= 4 * 512 and picture.shape[2] == 3


def test_demo_model_tracks_a_moving_shape_on_video(demo_run: Path, tmp_path: Path) -> None:
    """The video example: a test image whose circle moves 3 px a frame (np.roll), written with OpenCV, predicted with
    ``--track``: the circle is found as a circle in nearly every frame and keeps one track id."""
    import cv2

    from rfdetr import predict as predict_cli

    data = CocoDetection(demo_run / "dataset", "test", masks=True)
    circle = data.class_names.index("circle")
    singles = [data.load_sample(i) for i in range(len(data))]
    singles = [(im, t) for im, t in singles if [int(x) for x in t["labels"]] == [circle]]
    assert singles, "the demo's test split has no image with one circle"
    frames, step = 12, 3
    image, target = singles[0]
    first = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    height, width = first.shape[:2]
    box = target["boxes"][0].as_subclass(torch.Tensor).float()
    if box[2] + step * frames > width:  # move left instead, so that the circle never wraps around
        step = -step
    assert box[0] + step * frames >= 0
    clip = tmp_path / "moving.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    for i in range(frames):
        writer.write(cv2.cvtColor(np.roll(first, step * i, axis=1), cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out"
    argv = ["--weights", str(demo_run / "model.pth"), "--source", str(clip), "--output", str(out), "--track",
            "--threshold", "0.3", "--no_progress"]
    assert predict_cli.main(predict_cli.get_args_parser().parse_args(argv)) == 0
    lines = [json.loads(line) for line in (out / "moving.jsonl").read_text().splitlines()]
    assert len(lines) == frames
    ids, right = [], 0
    for i, line in enumerate(lines):
        truth = (box + torch.tensor([step * i, 0, step * i, 0]))[None]
        dets = line["detections"]
        if not dets:
            continue
        ious = box_iou(truth, torch.tensor([d["box"] for d in dets], dtype=torch.float32))[0]
        on_it = [d for d, iou in zip(dets, ious.tolist(), strict=True) if iou >= 0.5]
        if on_it:
            best = max(on_it, key=lambda d: d["score"])  # the object's most confident detection
            right += best["class_name"] == "circle"
            if best["track_id"] is not None:
                ids.append(best["track_id"])
    assert right >= frames - 2, right
    assert len(ids) >= frames - 3 and len(set(ids)) == 1, ids
