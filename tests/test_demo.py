"""``make demo``: the trained model is right on its own shapes, and the picture shows it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from rfdetr.data.coco import CocoDetection
from rfdetr.detr import load_model


def test_demo_model_scores_on_the_held_out_split(demo_run: Path) -> None:
    stage2 = next((demo_run / "stage2").iterdir())
    test = json.loads((stage2 / "results.json").read_text())["test"]
    assert test["segm"]["mAP50"] >= 0.6, test["segm"]
    assert test["bbox"]["mAP50"] >= 0.6, test["bbox"]


def test_demo_labels_match_the_shapes(demo_run: Path) -> None:
    """The test objects the model finds above the picture's threshold nearly all get their true class, their masks
    follow them (mean mask IoU >= 0.75), and most objects are found."""
    model = load_model(demo_run / "model.pth", device="cpu")
    data = CocoDetection(demo_run / "dataset", "test", masks=True)
    found = total = right = 0
    mask_ious = []
    for i in range(len(data)):
        image, target = data.load_sample(i)
        picture = image.permute(1, 2, 0).numpy()
        det = model.predict(picture, threshold=0.4)
        total += len(target["labels"])
        if not len(det):
            continue
        ious = box_iou(target["boxes"].as_subclass(torch.Tensor).float(), torch.from_numpy(det.xyxy))
        for g in range(len(target["labels"])):
            j = int(ious[g].argmax())
            if float(ious[g, j]) < 0.5:
                continue
            found += 1
            right += det.class_name[j] == data.class_names[int(target["labels"][g])]
            gt_mask = target["masks"][g].numpy()
            mask_ious.append((gt_mask & det.mask[j]).sum() / (gt_mask | det.mask[j]).sum())
    assert found >= 0.6 * total, (found, total)
    assert right >= 0.9 * found, (right, found)
    assert np.mean(mask_ious) >= 0.75, mask_ious


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
