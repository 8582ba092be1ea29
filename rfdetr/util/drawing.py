"""Drawing primitives shared by deployment pictures and training pictures: class colours, label placement, and
boxes / masks / labels drawn onto an RGB image with OpenCV.

It sits in the bottom layer so that both :mod:`rfdetr.deploy.media.visualize` (predictions of exported models) and
:mod:`rfdetr.train.plots` (the run folder's pictures) draw the same way without importing each other.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["class_color", "draw_instances", "label_position"]


def class_color(class_id: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class id (golden-ratio hue steps, full saturation)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_instances(image: np.ndarray, xyxy: np.ndarray, color_keys: np.ndarray, labels: Sequence[str],
                   scores: np.ndarray | None = None, masks: np.ndarray | None = None, mask_alpha: float = 0.45,
                   line_width: int | None = None, font_scale: float | None = None) -> np.ndarray:
    """A copy of ``image`` with masks blended in, mask outlines, boxes and one text label per instance.

    Args:
        image: RGB uint8 [H, W, 3].
        xyxy: [N, 4] boxes in the image's pixels.
        color_keys: [N] ints choosing each instance's colour (:func:`class_color`), e.g. class ids or track ids.
        labels: N texts (an empty text draws no label).
        scores: [N] confidences: the most confident mask ends on top and its label gets the preferred place (default:
            all equal).
        masks: bool [N, H, W] at the image's size, or None.
        mask_alpha: opacity of the mask colour.
        line_width: box / outline thickness in pixels (default: scales with the image, at least 1).
        font_scale: OpenCV font scale of the labels (default: follows the line width, at least 0.3).

    Returns:
        RGB uint8 [H, W, 3].
    """
    height, width = image.shape[:2]
    xyxy = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
    scores = np.zeros(len(xyxy), dtype=np.float32) if scores is None else np.asarray(scores)
    thickness = line_width or max(1, round(max(height, width) / 320))
    out = image.copy()
    colors = [np.array(class_color(int(c)), dtype=np.float32) for c in color_keys]
    if masks is not None:
        # Lowest score first so that the most confident instance ends on top where masks overlap. Only the masked
        # pixels are converted and blended: a full-frame float copy costs more than the rest of the drawing on video.
        for i in np.argsort(scores):
            mask = masks[i]
            blended = out[mask].astype(np.float32) * (1 - mask_alpha) + colors[i] * mask_alpha
            out[mask] = blended.round().clip(0, 255).astype(np.uint8)
    font_scale = font_scale or max(0.3, thickness * 0.35)
    placed: list[tuple[int, int, int, int]] = []
    # Boxes and outlines first, then the labels from the most confident down, so that a label is never painted over
    # by a later box and the most confident object gets its label in the usual place.
    for i in range(len(xyxy)):
        color = tuple(int(v) for v in colors[i])
        if masks is not None:
            contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, color, thickness)
        x0, y0, x1, y1 = (int(round(float(v))) for v in xyxy[i])
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)
    for i in np.argsort(-scores, kind="stable"):
        if not labels[i]:
            continue
        color = tuple(int(v) for v in colors[i])
        (tw, th), base = cv2.getTextSize(labels[i], cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        size = (tw + 2, th + base + 2)
        x, top = label_position(xyxy[i], size, (width, height), placed)
        placed.append((x, top, x + size[0], top + size[1]))
        cv2.rectangle(out, (x, top), (x + size[0], top + size[1]), color, -1)
        cv2.putText(out, labels[i], (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out


def label_position(box: np.ndarray, size: tuple[int, int], image_size: tuple[int, int],
                   placed: list[tuple[int, int, int, int]]) -> tuple[int, int]:
    """Top-left corner of a label of ``size`` (w, h) for ``box`` (x0, y0, x1, y1) that overlaps no ``placed`` label.

    Tried in order: above the box, inside its top edge, below the box, inside its bottom edge, each at the box's left
    and then its right end, shifted into the image; if every one overlaps, the spot that overlaps the least area.
    """
    width, height = image_size
    w, h = size
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    candidates = []
    for top in (y0 - h, y0, y1, y1 - h):
        for x in (x0, x1 - w):
            candidates.append((min(max(0, x), max(0, width - w)), min(max(0, top), max(0, height - h))))

    def overlap(spot: tuple[int, int]) -> int:
        rect = (spot[0], spot[1], spot[0] + w, spot[1] + h)
        return sum(max(0, min(rect[2], p[2]) - max(rect[0], p[0])) * max(0, min(rect[3], p[3]) - max(rect[1], p[1]))
                   for p in placed)

    for spot in candidates:
        if overlap(spot) == 0:
            return spot
    return min(candidates, key=overlap)
