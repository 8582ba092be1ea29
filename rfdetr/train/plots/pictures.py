"""The run folder's pictures of images: training batches as the model sees them, and validation predictions beside
the ground truth. Drawn with OpenCV (:func:`rfdetr.util.drawing.draw_instances`), written as JPEG bytes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD
from rfdetr.util.drawing import draw_instances

__all__ = ["batch_mosaic", "jpeg", "side_by_side"]

# Longest side of one tile in a batch mosaic and of one half of a validation picture, in pixels: small training
# inputs are enlarged so that their labels are readable, large photos shrunk so that the files stay small.
TILE_SIDE = 320
PANEL_SIDE = 560
_JPEG_QUALITY = 90
# Label size on tiles and panels (OpenCV's scale: about 10 px high letters), readable without zooming.
_FONT_SCALE = 0.5


def jpeg(image: np.ndarray) -> bytes:
    """RGB uint8 [H, W, 3] -> JPEG bytes."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return data.tobytes()


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] ImageNet-normalised float -> RGB uint8 [H, W, 3]."""
    pixels = image.detach().float().cpu()  # drawn on the CPU: the mean / std tensors are made there too
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=pixels.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=pixels.device)[:, None, None]
    pixels = (pixels * std + mean).clamp(0, 1)
    return (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _resize(image: np.ndarray, side: int, masks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None,
                                                                                     float]:
    """Scale so that the longest side is ``side``: (image, masks resized too, scale factor)."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.resize(image, size, interpolation=interpolation)
    if masks is not None and len(masks):
        masks = np.stack([cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
                          for m in masks])
    elif masks is not None:
        masks = np.zeros((0, size[1], size[0]), dtype=bool)
    return out, masks, scale


def _title(image: np.ndarray, text: str) -> np.ndarray:
    """A white strip with ``text`` above ``image``."""
    strip = np.full((22, image.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def _tile(images: Sequence[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Images (same height or not) on a white grid, left to right, top to bottom."""
    rows = math.ceil(len(images) / columns)
    cell_h = max(i.shape[0] for i in images)
    cell_w = max(i.shape[1] for i in images)
    out = np.full((rows * cell_h + (rows - 1) * gap, columns * cell_w + (columns - 1) * gap, 3), 255, dtype=np.uint8)
    for n, image in enumerate(images):
        r, c = divmod(n, columns)
        y, x = r * (cell_h + gap), c * (cell_w + gap)
        out[y:y + image.shape[0], x:x + image.shape[1]] = image
    return out


def batch_mosaic(images: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]], class_names: Sequence[str],
                 max_images: int = 16) -> np.ndarray:
    """One training batch as the model receives it (after augmentation and resizing), its labels drawn.

    Args:
        images: [B, 3, H, W] ImageNet-normalised.
        targets: per image ``boxes`` [N, 4] normalised cxcywh, ``labels`` [N], optionally ``masks`` [N, H, W].
        class_names: K names.
        max_images: at most this many images of the batch.

    Returns:
        RGB uint8 mosaic.
    """
    tiles = []
    for image, target in list(zip(images, targets, strict=True))[:max_images]:
        rgb = _to_uint8(image)
        height, width = rgb.shape[:2]
        boxes = target["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
        xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)
        xyxy *= np.array([width, height, width, height], dtype=np.float32)
        labels = target["labels"].detach().cpu().numpy().reshape(-1)
        masks = target.get("masks")
        masks_np = masks.detach().cpu().numpy().astype(bool) if masks is not None and masks.ndim == 3 else None
        rgb, masks_np, scale = _resize(rgb, TILE_SIDE, masks_np)
        names = [class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c)) for c in labels]
        tiles.append(draw_instances(rgb, xyxy * scale, labels, names, masks=masks_np, font_scale=_FONT_SCALE))
    return _tile(tiles, columns=math.ceil(math.sqrt(len(tiles))))


def side_by_side(image: np.ndarray, truth: Mapping[str, Any], predictions: Mapping[str, Any],
                 class_names: Sequence[str], caption: str) -> np.ndarray:
    """Ground truth (left) and predictions (right) on one validation image.

    Args:
        image: RGB uint8 [H, W, 3], the original image.
        truth: ``boxes`` [G, 4] xyxy pixels, ``labels`` [G], optionally ``masks`` bool [G, H, W].
        predictions: the same plus ``scores`` [D].
        class_names: K names.
        caption: the right panel's title (e.g. which model, epoch and threshold).
    """
    panels = []
    for title, instances, scored in (("ground truth", truth, False), (caption, predictions, True)):
        rgb, masks, scale = _resize(image, PANEL_SIDE, instances.get("masks"))
        labels = np.asarray(instances["labels"], dtype=np.int64).reshape(-1)
        scores = np.asarray(instances["scores"]).reshape(-1) if scored else None
        names = [class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c)) for c in labels]
        if scores is not None:
            names = [f"{n} {s:.2f}" for n, s in zip(names, scores, strict=True)]
        boxes = np.asarray(instances["boxes"], dtype=np.float32).reshape(-1, 4) * scale
        drawn = draw_instances(rgb, boxes, labels, names, scores=scores, masks=masks, font_scale=_FONT_SCALE)
        panels.append(_title(drawn, f"{title}: {len(labels)}"))
    return _tile(panels, columns=2, gap=8)


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an image file (EXIF orientation applied, as in training)."""
    from rfdetr.data.image_io import read_rgb

    return np.asarray(read_rgb(path), dtype=np.uint8)
