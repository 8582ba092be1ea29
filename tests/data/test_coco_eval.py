"""CocoEvaluator: ground truth as predictions scores 1.0 (bbox and segm), the id-0 fix, empty predictions, DDP merge."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchvision.ops import box_convert

from rfdetr.data.coco import CocoDetection
from rfdetr.data.coco_eval import STAT_NAMES, CocoEvaluator, load_ground_truth


def _gt_as_predictions(dataset: CocoDetection) -> dict[int, dict[str, torch.Tensor]]:
    """Each image's targets turned back into predictions (original-pixel xyxy boxes, score 1, full-size masks)."""
    predictions = {}
    for index in range(len(dataset)):
        _, target = dataset[index]
        h, w = target["orig_size"].tolist()
        boxes = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        predictions[int(target["image_id"])] = {"boxes": boxes, "scores": torch.ones(len(boxes)),
                                                "labels": target["labels"], "masks": target["masks"]}
    return predictions


def _no_predictions(image_ids: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    return {i: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 1, 1, dtype=torch.bool)} for i in image_ids}


@pytest.fixture(scope="module")
def synthetic_valid(synthetic_dir: Path) -> CocoDetection:
    return CocoDetection(synthetic_dir, "valid", masks=True)


def test_ground_truth_scores_one_on_synthetic(synthetic_valid: CocoDetection) -> None:
    evaluator = CocoEvaluator.from_dataset(synthetic_valid)
    assert evaluator.iou_types == ("bbox", "segm")
    evaluator.update(_gt_as_predictions(synthetic_valid))
    stats = evaluator.evaluate()
    for iou_type in ("bbox", "segm"):
        assert stats[iou_type]["mAP"] == stats[iou_type]["mAP50"] == stats[iou_type]["mAP75"] == 1.0
        assert stats[iou_type]["per_class_AP"] == {"circle": 1.0, "square": 1.0, "triangle": 1.0}
        assert len(stats[iou_type]["stats"]) == len(STAT_NAMES) == 12
    assert "IoU metric: bbox" in evaluator.summary and "IoU metric: segm" in evaluator.summary
    assert "per-class AP: circle 1.000" in evaluator.summary and "Running per image" not in evaluator.summary


def test_printed_summary_shows_the_returned_numbers(synthetic_valid: CocoDetection) -> None:
    """maxDets 500 (upstream's training value): pycocotools' own first line would read -1.000 at maxDets=100."""
    evaluator = CocoEvaluator.from_dataset(synthetic_valid, max_dets=500)
    predictions = _gt_as_predictions(synthetic_valid)
    # Drop every circle, ground truth and prediction alike, from the scored images: that class has no ground truth.
    keep_ids = [i for i, p in predictions.items() if 0 not in p["labels"].tolist()]
    assert keep_ids, "the synthetic split needs images without circles"
    evaluator.update({i: predictions[i] for i in keep_ids})
    stats = evaluator.evaluate()
    lines = evaluator.summary.splitlines()
    first = lines[1]
    assert first.startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=500 ]")
    assert first.endswith(f"= {stats['bbox']['stats'][0]:0.3f}") and "-1.000" not in first
    assert stats["bbox"]["stats"][0] == stats["bbox"]["mAP"] == 1.0
    assert "circle: no ground truth" in evaluator.summary and "circle -1" not in evaluator.summary
    assert "square 1.000" in evaluator.summary


def test_ground_truth_scores_one_on_strawberry(strawberry_dir: Path) -> None:
    """Strawberry's annotation ids start at 0; without renumbering pycocotools scores the id-0 object as a miss."""
    json_path = strawberry_dir / "valid" / "_annotations.coco.json"
    before = hashlib.sha256(json_path.read_bytes()).hexdigest()
    dataset = CocoDetection(strawberry_dir, "valid", masks=True)
    evaluator = CocoEvaluator.from_dataset(dataset)
    evaluator.update(_gt_as_predictions(dataset))
    stats = evaluator.evaluate()
    assert stats["bbox"]["mAP"] == stats["segm"]["mAP"] == 1.0
    assert set(stats["segm"]["per_class_AP"]) == {"Flower", "Fruit", "Leaf"}
    assert hashlib.sha256(json_path.read_bytes()).hexdigest() == before  # the input file is never touched
    assert min(evaluator.coco_gt.getAnnIds()) == 1
    assert min(a["id"] for a in json.loads(json_path.read_text())["annotations"]) == 0

    # The same evaluation on the file as exported (ids from 0) is wrong: this is what the renumbering fixes.
    evaluator.coco_gt = load_ground_truth(json_path)
    raw = json.loads(json_path.read_text())
    evaluator.coco_gt.dataset["annotations"] = raw["annotations"]
    evaluator.coco_gt.createIndex()
    assert evaluator.evaluate()["bbox"]["mAP"] < 0.98


def test_no_predictions_gives_zero(synthetic_valid: CocoDetection) -> None:
    evaluator = CocoEvaluator.from_dataset(synthetic_valid)
    never_updated = evaluator.evaluate()
    evaluator.update(_no_predictions(synthetic_valid.image_ids))
    empty = evaluator.evaluate()
    for stats in (never_updated, empty):
        for iou_type in ("bbox", "segm"):
            assert stats[iou_type]["mAP"] == stats[iou_type]["mAP50"] == 0.0
            assert set(stats[iou_type]["per_class_AP"].values()) == {0.0}


def test_partial_and_wrong_predictions(synthetic_valid: CocoDetection, caplog: pytest.LogCaptureFixture) -> None:
    predictions = _gt_as_predictions(synthetic_valid)
    evaluator = CocoEvaluator.from_dataset(synthetic_valid, iou_types=("bbox",))
    # Wrong classes everywhere (label + 1 mod 3) plus an out-of-range label that must be skipped with a warning.
    for pred in predictions.values():
        pred["labels"] = (pred["labels"] + 1) % 3
    first = next(iter(predictions.values()))
    first.update(labels=torch.cat([first["labels"], torch.tensor([3])]), scores=torch.cat([first["scores"],
                 torch.ones(1)]), boxes=torch.cat([first["boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0]])]))
    evaluator.update(predictions)
    with caplog.at_level(logging.WARNING, logger="rfdetr.data.coco_eval"):
        assert evaluator.evaluate()["bbox"]["mAP"] == 0.0
    assert any("1 predictions had labels outside 0..2" in r.getMessage() for r in caplog.records)

    # Right boxes on half the images only: recall halves, AP is well between 0 and 1.
    evaluator.reset()
    predictions = _gt_as_predictions(synthetic_valid)
    ids = sorted(predictions)
    evaluator.update({i: predictions[i] for i in ids[: len(ids) // 2]})
    evaluator.update(_no_predictions(ids[len(ids) // 2:]))
    assert 0.2 < evaluator.evaluate()["bbox"]["mAP"] < 0.8


def test_bad_inputs_raise(synthetic_valid: CocoDetection) -> None:
    evaluator = CocoEvaluator.from_dataset(synthetic_valid)
    pred = _gt_as_predictions(synthetic_valid)[synthetic_valid.image_ids[0]]
    with pytest.raises(ValueError, match="image id 999"):
        evaluator.update({999: pred})
    with pytest.raises(ValueError, match="needs 'masks'"):
        evaluator.update({synthetic_valid.image_ids[0]: {k: v for k, v in pred.items() if k != "masks"}})
    with pytest.raises(ValueError, match="resize masks to the original size"):
        evaluator.update({synthetic_valid.image_ids[0]: {**pred, "masks": pred["masks"][:, :64, :64]}})
    with pytest.raises(ValueError, match="iou_types"):
        CocoEvaluator(synthetic_valid.annotation_file, [1, 2, 3], iou_types=("keypoints",))


def test_synchronize_merges_rank_results(synthetic_valid: CocoDetection, monkeypatch: pytest.MonkeyPatch) -> None:
    """all_gather_object is faked with another rank's evaluator: images are merged, overlaps (padding) count once."""
    predictions = _gt_as_predictions(synthetic_valid)
    ids = sorted(predictions)
    ours, theirs = (CocoEvaluator.from_dataset(synthetic_valid) for _ in range(2))
    ours.update({i: predictions[i] for i in ids[:5]})
    theirs.update({i: predictions[i] for i in ids[4:]})  # one image on both ranks, like DistributedSampler padding

    def all_gather_object(out: list, obj: object) -> None:
        out[0], out[1] = obj, (theirs._results, theirs._unknown_labels)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    ours.synchronize()  # the collective, on every rank ...

    def no_second_gather(out: list, obj: object) -> None:
        raise AssertionError("evaluate() after synchronize() must not gather again (only rank 0 calls it)")

    monkeypatch.setattr(dist, "all_gather_object", no_second_gather)
    stats = ours.evaluate()  # ... then COCOeval on the main rank only
    assert ours.image_ids == ids and stats["bbox"]["mAP"] == stats["segm"]["mAP"] == 1.0
    assert sum(len(r["bbox"]) for r in ours._results.values()) == sum(len(p["labels"]) for p in predictions.values())


def _ddp_worker(rank: int, init_file: str, root: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        dataset = CocoDetection(root, "valid", masks=True)
        predictions = _gt_as_predictions(dataset)
        ids = sorted(predictions)
        mine = ids[:5] if rank == 0 else ids[4:]  # one image on both ranks
        evaluator = CocoEvaluator.from_dataset(dataset)
        evaluator.update({i: predictions[i] for i in mine})
        stats = evaluator.evaluate()
        result = {"images": evaluator.image_ids, "bbox": stats["bbox"]["mAP"], "segm": stats["segm"]["mAP"]}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_merges_across_real_ddp_ranks(synthetic_dir: Path, tmp_path: Path) -> None:
    """Two gloo processes (spawned: forking after torch started its thread pools can deadlock); ~5-15 s."""
    mp.start_processes(_ddp_worker, args=(str(tmp_path / "init"), str(synthetic_dir), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    ids = CocoDetection(synthetic_dir, "valid").image_ids
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result == {"images": sorted(ids), "bbox": 1.0, "segm": 1.0}


def _fake_outputs(target: dict[str, torch.Tensor], queries: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    """Raw outputs of one image ([1, Q, ...]) for ``PostProcess``: a noisy copy of each ground-truth object (box,
    class, 16 x 16 mask logits) followed by random queries; logits are rounded to 0.1 so that many scores tie, and
    the spare last logit ("background") sometimes ranks high."""
    g = torch.Generator().manual_seed(seed + int(target["image_id"]))
    n = min(len(target["boxes"]), queries // 2)
    logits = torch.randn(queries, 4, generator=g) * 1.5
    boxes = torch.rand(queries, 4, generator=g) * 0.5 + 0.25
    masks = torch.randn(queries, 16, 16, generator=g) * 2
    logits[:n, target["labels"][:n]] += 2.0
    boxes[:n] = (target["boxes"][:n] + torch.randn(n, 4, generator=g) * 0.01).clamp(0.01, 1)
    gt_masks = torch.nn.functional.interpolate(target["masks"][:n, None].float(), size=(16, 16), mode="area")[:, 0]
    masks[:n] = gt_masks * 6 - 3 + torch.randn(n, 16, 16, generator=g)
    return {"pred_logits": (logits * 10).round()[None] / 10, "pred_boxes": boxes[None], "pred_masks": masks[None]}


@pytest.mark.parametrize("max_dets", [3, 12, 500])
def test_pasting_only_scorable_masks_leaves_every_number_identical(synthetic_valid: CocoDetection, max_dets: int
                                                                   ) -> None:
    """evaluate() pastes and encodes only the masks COCOeval can count (no category, beyond maxDets per image and
    category), in the encoder's column-major layout: every bbox and segm number is bit-identical to scoring all
    ``num_select`` detections the way evaluation did before (row-major masks, the spare label filtered after)."""
    from torch import nn

    from rfdetr.models import PostProcess
    from rfdetr.train.engine import evaluate

    batches = []
    for index in range(len(synthetic_valid)):
        _, target = synthetic_valid[index]
        batches.append((torch.zeros(1, 3, 8, 8), [target]))
    outputs = {int(t[0]["image_id"]): _fake_outputs(t[0]) for _, t in batches}

    def forward(model: nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict:
        return outputs[int(targets[0]["image_id"])]

    pasted: list[int] = []

    class Counting(PostProcess):
        def _masks(self, mask_logits: torch.Tensor, size: tuple[int, int], column_major: bool = False
                   ) -> torch.Tensor:
            pasted.append(len(mask_logits))
            return super()._masks(mask_logits, size, column_major)

    postprocess = Counting(num_select=60)
    results = {}
    for name, post in (("all", lambda o, s: postprocess(o, s)), ("scorable", postprocess)):
        pasted.clear()
        evaluator = CocoEvaluator.from_dataset(synthetic_valid, max_dets=max_dets)
        results[name] = evaluate(nn.Identity(), None, post, batches, evaluator, torch.device("cpu"), forward=forward,
                                 progress=False)
        results[f"{name}_pasted"] = sum(pasted)
    assert results["scorable"] == results["all"]
    assert 0.05 < results["all"]["segm"]["mAP"] < 0.95 and 0.05 < results["all"]["bbox"]["mAP"] < 0.95
    assert results["scorable_pasted"] < results["all_pasted"] == 60 * len(batches)
    # COCOeval counts at most max(10, max_dets) per image and category (it sorts [1, 10, max_dets]).
    assert results["scorable_pasted"] <= 3 * max(10, max_dets) * len(batches)


def test_scorable_follows_cocoeval_truncation(synthetic_valid: CocoDetection) -> None:
    """Stable descending score order within each category, the spare label and categories without ground truth
    dropped."""
    evaluator = CocoEvaluator.from_dataset(synthetic_valid, max_dets=12)
    scores = torch.tensor([0.5] * 12 + [0.9, 0.7, 0.9, 0.1])
    labels = torch.tensor([0] * 12 + [0, 3, 0, 1])
    # label 0: the two 0.9s, then the first ten of the twelve tied 0.5s; label 1: kept; label 3: no category.
    expected = [True] * 10 + [False, False, True, False, True, True]
    assert evaluator.scorable(scores, labels).tolist() == expected
    evaluator._label_has_gt[1] = False  # as for a Roboflow placeholder category
    assert evaluator.scorable(scores, labels).tolist() == expected[:-1] + [False]
