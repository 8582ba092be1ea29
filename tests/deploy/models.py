"""The tiny models every export format is tested with, and the checks that an exported file matches PyTorch.

Each format's test module exports :func:`tiny_detector`, :func:`tiny_segmenter` (rfdetr's single-stage segmentation
head) and the tiny stage-2 model (detector + MaskHeadNano, from the ``tiny_stage2_checkpoint`` fixture), runs the
file in its runtime through :class:`rfdetr.deploy.runtime.runner.ExportedModel` and calls :func:`assert_outputs_match`
and :func:`assert_same_detections`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from rfdetr.deploy.runtime.processing import class_name, load_images, preprocess
from rfdetr.deploy.runtime.runner import ExportedModel
from rfdetr.detr import RFDETR, RFDETRTiny
from rfdetr.models.postprocess import box_cxcywh_to_xyxy
from tests.helpers import perturb
from tests.tolerances import (
    FLOAT32_FACTOR,
    DetectionTolerance,
    Tolerance,
    box_iou_lower_bound,
    export_outputs,
    float32_tolerance,
    float64_copy,
    ulp_floor,
)

RESOLUTION = 64
NAMES = ["circle", "square", "triangle"]


class RFDETRTinySeg(RFDETR):
    """The tiny config with rfdetr's own segmentation head: a single-stage segmentation model."""

    size = "tiny"

    def _config_for(self, *args: object) -> object:  # type: ignore[override]
        return super()._config_for(*args).replace(segmentation_head=True)  # type: ignore[arg-type]


def tiny_detector() -> RFDETR:
    torch.manual_seed(0)
    model = RFDETRTiny(pretrain_weights=False, num_classes=3, class_names=NAMES, device="cpu")
    perturb(model.model, 1)
    return model


def tiny_segmenter() -> RFDETR:
    torch.manual_seed(0)
    model = RFDETRTinySeg(pretrain_weights=False, num_classes=3, class_names=NAMES, device="cpu")
    perturb(model.model, 2)
    return model


def image(height: int = 70, width: int = 90, seed: int = 0) -> np.ndarray:
    """A random RGB uint8 picture."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@dataclass
class Ranked:
    """One image's top ``num_select`` (query, class) pairs as :class:`rfdetr.models.postprocess.PostProcess` ranks
    them, with what the post-processor throws away: the query of each pair and its mask logits."""

    scores: np.ndarray  # [n] sigmoid scores, descending
    labels: np.ndarray  # [n]
    boxes: np.ndarray  # [n, 4] xyxy pixels of the original image
    queries: np.ndarray  # [n]
    mask_logits: torch.Tensor | None  # [Q, h, w] of the image (all queries)
    size: tuple[int, int]

    def mask_logit(self, i: int) -> np.ndarray:
        """Detection ``i``'s mask logits bilinearly resized to the image, as the post-processor does before ``> 0``."""
        assert self.mask_logits is not None
        low = self.mask_logits[int(self.queries[i])][None, None]
        return F.interpolate(low, size=self.size, mode="bilinear", align_corners=False)[0, 0].double().numpy()


def ranked(outputs: list[torch.Tensor], sizes: list[tuple[int, int]], num_select: int) -> list[Ranked]:
    """``forward_export`` outputs (boxes, logits[, masks]) of a batch -> per image :class:`Ranked` (float64 math)."""
    boxes, logits = outputs[0].double(), outputs[1].double()
    result = []
    for b, (height, width) in enumerate(sizes):
        scores, index = torch.sort(logits[b].sigmoid().flatten(), descending=True, stable=True)
        scores, index = scores[:num_select], index[:num_select]
        query = torch.div(index, logits.shape[-1], rounding_mode="floor")
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        xyxy = torch.minimum(box_cxcywh_to_xyxy(boxes[b, query]) * scale, scale)  # as PostProcess: sizes clamped
        result.append(Ranked(scores.numpy(), (index % logits.shape[-1]).numpy(), xyxy.clamp(min=0).numpy(),
                             query.numpy(), outputs[2][b] if len(outputs) > 2 else None, (height, width)))
    return result


def pixels_of(model: RFDETR, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The network input ``predict()`` makes of ``images``, and their (height, width)."""
    tensors, _ = load_images(images)
    pixels = torch.cat([preprocess(t, model.resolution, "cpu") for t in tensors])
    return pixels, [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` with every box of ``b``; 0 where both are empty (random weights give empty boxes)."""
    iou = box_iou(torch.from_numpy(np.asarray(a, dtype=np.float64).reshape(-1, 4)),
                  torch.from_numpy(np.asarray(b, dtype=np.float64).reshape(-1, 4))).numpy()
    return np.nan_to_num(iou, nan=0.0)


def _same_box(box: np.ndarray, others: np.ndarray, error: float) -> np.ndarray:
    """Whether each of ``others`` [M, 4] has IoU with ``box`` at least the worst case a corner error of ``error``
    pixels allows (or, equivalently for an empty box, every corner within ``error``)."""
    ious = _box_iou(box, others)[0]
    close = np.abs(others - box).max(-1) <= error
    return close | (ious >= box_iou_lower_bound(box.reshape(1, 4), error)[0] - 1e-9)


def detection_error(ours: list[Ranked], exact: list[Ranked], count: int) -> DetectionTolerance:
    """How far the top ``count`` detections of ``ours`` are from their counterparts in ``exact`` (the nearest of the
    same class among ``exact``'s top ``2 * count``, by score difference plus box-corner difference over the image
    size): max score, box-corner (pixels) and resized-mask-logit differences."""
    score = box = mask = 0.0
    for a, b in zip(ours, exact, strict=True):
        n, m = min(count, len(a.scores)), min(2 * count, len(b.scores))
        for i in range(n):
            d_score = np.abs(b.scores[:m] - a.scores[i])
            d_box = np.abs(b.boxes[:m] - a.boxes[i]).max(-1)
            distance = np.where(b.labels[:m] == a.labels[i], d_score + d_box / max(a.size), np.inf)
            j = int(np.argmin(distance))
            score, box = max(score, float(d_score[j])), max(box, float(d_box[j]))
            if a.mask_logits is not None:
                mask = max(mask, float(np.abs(a.mask_logit(i) - b.mask_logit(j)).max()))
    return DetectionTolerance(score, box, mask)


def float32_detection_tolerance(model: RFDETR, pixels: torch.Tensor, sizes: list[tuple[int, int]],
                                count: int, factor: float = FLOAT32_FACTOR) -> DetectionTolerance:
    """Bounds for another float32 path's detections of these images: ``factor`` x the float32 model's own deviation
    from its float64 copy, measured on the same detections (:func:`detection_error`), floored at a few ulps."""
    num_select = model.postprocess.num_select
    ours = ranked(export_outputs(model.model, pixels), sizes, num_select)
    exact = ranked(export_outputs(float64_copy(model.model), pixels), sizes, num_select)
    err = detection_error(ours, exact, count)
    mask_mag = max((float(r.mask_logits.abs().max()) for r in ours if r.mask_logits is not None), default=0.0)
    return DetectionTolerance(
        score=max(factor * err.score, ulp_floor(1.0)),
        box=max(factor * err.box, ulp_floor(float(max(max(s) for s in sizes)))),
        mask_logit=max(factor * err.mask_logit, ulp_floor(mask_mag)),
    )


def assert_outputs_match(model: RFDETR, exported: ExportedModel, batch: int = 1, tol: Tolerance | None = None,
                         top_k: int = 10) -> dict[str, float]:
    """Raw outputs within ``tol`` (max abs) and the same top-``top_k`` (query, class) pairs by score, up to near
    ties: a pair may enter or leave the top ``top_k`` only if its logit is within ``2 * tol.logits`` of the cut.

    ``tol`` defaults to the float32 error model (:func:`tests.tolerances.float32_tolerance`) on the same input.

    Returns:
        The max abs difference of each output, for messages and READMEs.
    """
    pixels = torch.randn(batch, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(5))
    got = exported.run(pixels)
    expected = export_outputs(model.model, pixels)
    if tol is None:
        tol = float32_tolerance(model.model, pixels)
    names = ["pred_boxes", "pred_logits", "pred_masks"][: 3 if model.masks else 2]
    assert sorted(got) == sorted(names)
    diffs = {}
    for name, theirs, limit in zip(names, expected, (tol.boxes, tol.logits, tol.masks), strict=False):
        ours = got[name]
        assert tuple(ours.shape) == tuple(theirs.shape), name
        diffs[name] = float((ours - theirs).abs().max())
        assert diffs[name] <= limit, (name, diffs[name], limit)
    flat_ours, flat_torch = got["pred_logits"].flatten(1), expected[1].flatten(1)
    for b in range(batch):
        top_ours = set(torch.topk(flat_ours[b], top_k).indices.tolist())
        ranking = torch.sort(flat_torch[b], descending=True, stable=True)
        top_torch = set(ranking.indices[:top_k].tolist())
        cut = float(ranking.values[top_k - 1] + ranking.values[top_k]) / 2
        for pair in top_ours ^ top_torch:
            assert abs(float(flat_torch[b, pair]) - cut) <= 2 * tol.logits, ("top-k pair far from the cut", pair)
    return diffs


def assert_same_detections(model: RFDETR, exported: ExportedModel, images: list[np.ndarray], top_k: int = 10,
                           threshold: float | None = None, tol: DetectionTolerance | None = None) -> int:
    """``predict()`` through the runner finds PyTorch's objects: the same class, box IoU above the worst case the box
    bound allows, score within the score bound, mask pixels equal wherever PyTorch's mask logit is confident.

    ``tol`` defaults to the float32 error model measured on these very images
    (:func:`float32_detection_tolerance`). With ``threshold=None`` each image's threshold ``t`` is put so that
    PyTorch's top ``top_k`` detections clear ``t + tol.score`` (random-weight models score ~0.02, so a fixed threshold
    would compare nothing). Every PyTorch detection above ``t + tol.score`` needs a runtime one above
    ``t - tol.score``, and every runtime detection above ``t + tol.score`` a PyTorch one above ``t``.

    Returns:
        How many detections were compared (asserted >= ``top_k`` per image when ``threshold`` is None).
    """
    pixels, sizes = pixels_of(model, images)
    ours = ranked(export_outputs(model.model, pixels), sizes, model.postprocess.num_select)
    if tol is None:
        tol = float32_detection_tolerance(model, pixels, sizes, 2 * top_k)
    theirs_all = exported.predict(images, threshold=0.0)
    assert isinstance(theirs_all, list) and len(theirs_all) == len(images)
    compared = confident = 0
    for a, b in zip(ours, theirs_all, strict=True):
        assert len(b) == model.postprocess.num_select
        assert b.class_name == [class_name(model.class_names, int(i)) for i in b.class_id]
        assert (b.mask is None) == (a.mask_logits is None)
        t = float(a.scores[top_k - 1]) - tol.score - 1e-9 if threshold is None else threshold
        candidates = np.flatnonzero(b.confidence > t - tol.score)
        used: set[int] = set()
        for i in np.flatnonzero(a.scores > t + tol.score):
            ious = _box_iou(a.boxes[i], b.xyxy[candidates])[0]
            ok = ((b.class_id[candidates] == a.labels[i])
                  & (np.abs(b.confidence[candidates] - a.scores[i]) <= tol.score)
                  & _same_box(a.boxes[i], b.xyxy[candidates], tol.box)
                  & ~np.isin(candidates, list(used)))
            assert ok.any(), ("no runtime detection matches", i, a.scores[i], a.labels[i], a.boxes[i], tol)
            j = int(candidates[np.argmax(np.where(ok, ious, -1.0))])
            used.add(j)
            compared += 1
            if a.mask_logits is not None:
                logit = a.mask_logit(i)
                sure = np.abs(logit) > tol.mask_logit
                assert b.mask is not None and b.mask[j].shape == logit.shape
                assert np.array_equal(b.mask[j][sure], logit[sure] > 0), ("mask differs where PyTorch is sure", i)
                confident += int(sure.sum())
        above = np.flatnonzero(a.scores > t)
        for j in np.flatnonzero(b.confidence > t + tol.score):
            if j in used:
                continue
            ok = ((a.labels[above] == b.class_id[j]) & (np.abs(a.scores[above] - b.confidence[j]) <= tol.score)
                  & _same_box(b.xyxy[j], a.boxes[above], tol.box))
            assert ok.any(), ("a runtime detection PyTorch does not have", j, b.confidence[j], b.class_id[j])
    if threshold is None:
        assert compared >= top_k * len(images), compared
    if model.masks and compared:
        assert confident > 0  # the mask comparison compared pixels
    return compared
