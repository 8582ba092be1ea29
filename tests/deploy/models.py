"""The tiny models every export format is tested with, and the checks that an exported file matches PyTorch.

Each format's test module exports :func:`tiny_detector`, :func:`tiny_segmenter` (rfdetr's single-stage segmentation
head) and the tiny stage-2 model (detector + MaskHeadNano, from the ``tiny_stage2_checkpoint`` fixture), runs the
file in its runtime through :class:`rfdetr.deploy.runner.ExportedModel` and calls :func:`assert_outputs_match` and
:func:`assert_same_detections`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rfdetr.deploy.runner import ExportedModel
from rfdetr.detr import RFDETR, RFDETRTiny

RESOLUTION = 64
NAMES = ["circle", "square", "triangle"]


class RFDETRTinySeg(RFDETR):
    """The tiny config with rfdetr's own segmentation head: a single-stage segmentation model."""

    size = "tiny"

    def _config_for(self, *args: object) -> object:  # type: ignore[override]
        return super()._config_for(*args).replace(segmentation_head=True)  # type: ignore[arg-type]


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Random non-trivial weights (the zero-initialised box delta and mask bias would hide errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


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


@dataclass(frozen=True)
class Tolerance:
    """Max abs differences allowed between an exported file's raw outputs and PyTorch float32."""

    boxes: float = 1e-4
    logits: float = 1e-4
    masks: float = 1e-3


FLOAT32 = Tolerance()


def assert_outputs_match(model: RFDETR, exported: ExportedModel, batch: int = 1, tol: Tolerance = FLOAT32,
                         top_k: int = 10) -> dict[str, float]:
    """Raw outputs within ``tol`` (max abs) and the same top-``top_k`` (query, class) pairs by score.

    Returns:
        The max abs difference of each output, for messages and READMEs.
    """
    pixels = torch.randn(batch, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(5))
    got = exported.run(pixels)
    with torch.no_grad():
        expected = model.model.forward_export(pixels)
    names = ["pred_boxes", "pred_logits", "pred_masks"][: 3 if model.masks else 2]
    assert sorted(got) == sorted(names)
    diffs = {}
    for name, theirs, limit in zip(names, expected, (tol.boxes, tol.logits, tol.masks), strict=False):
        ours = got[name]
        assert tuple(ours.shape) == tuple(theirs.shape), name
        diffs[name] = float((ours - theirs).abs().max())
        assert diffs[name] <= limit, (name, diffs[name], limit)
    top_ours = torch.sort(got["pred_logits"].flatten(1), dim=1, descending=True, stable=True).indices[:, :top_k]
    top_torch = torch.sort(expected[1].flatten(1), dim=1, descending=True, stable=True).indices[:, :top_k]
    assert torch.equal(top_ours, top_torch)
    return diffs


def assert_same_detections(model: RFDETR, exported: ExportedModel, images: list[np.ndarray],
                           score_atol: float = 1e-5, box_atol: float = 1e-3, top_k: int = 10) -> None:
    """``predict()`` through the runner gives PyTorch's detections: scores, top-k classes, boxes and masks."""
    ours = model.predict(images, threshold=0.0)
    theirs = exported.predict(images, threshold=0.0)
    assert isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs) == len(images)
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == len(b) == model.postprocess.num_select
        np.testing.assert_allclose(b.confidence, a.confidence, atol=score_atol)
        np.testing.assert_array_equal(b.class_id[:top_k], a.class_id[:top_k])
        np.testing.assert_allclose(b.xyxy[:top_k], a.xyxy[:top_k], atol=box_atol)
        assert b.class_name == a.class_name
        if a.mask is None:
            assert b.mask is None
        else:
            assert b.mask is not None and b.mask.shape == a.mask.shape
            assert (b.mask[:top_k] != a.mask[:top_k]).mean() < 1e-3  # only pixels whose logit is ~0 may flip
