"""Draw detections (boxes, labels, instance masks) on an image, for the demo and quick looks at predictions."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from rfdetr.deploy.runtime.detections import Detections

__all__ = ["class_color", "label_position", "render_detections"]


def class_color(class_id: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class id (golden-ratio hue steps, full saturation)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def render_detections(image: np.ndarray, detections: Detections, mask_alpha: float = 0.45,
                      line_width: int | None = None) -> np.ndarray:
    """A copy of ``image`` with masks blended in, mask outlines, boxes and ``name score`` labels.

    Tracked detections (``tracker_id`` >= 0) are labelled ``#id name score`` and coloured by track, so that one object
    keeps its colour from frame to frame whatever its class.

    Args:
        image: RGB uint8 [H, W, 3] (the original image the detections refer to).
        detections: boxes in the image's pixels; ``mask`` [N, H, W] bool when the model predicts masks.
        mask_alpha: opacity of the mask colour.
        line_width: box / outline thickness in pixels (default: scales with the image, at least 1).

    Returns:
        RGB uint8 [H, W, 3].

    Raises:
        ValueError: ``image`` is not RGB uint8, or the masks are not the image's size.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if detections.mask is not None and len(detections) and detections.mask.shape[1:] != (height, width):
        raise ValueError(f"masks are {detections.mask.shape[1:]} but the image is {(height, width)}: pass the "
                         "original image the detections were made on")
    thickness = line_width or max(1, round(max(height, width) / 320))
    out = image.copy()
    keys = detections.class_id
    if detections.tracker_id is not None:  # -1: not (yet) in a track, coloured by class
        keys = np.where(detections.tracker_id >= 0, detections.tracker_id, detections.class_id)
    colors = [np.array(class_color(int(c)), dtype=np.float32) for c in keys]
    if detections.mask is not None:
        # Lowest score first so that the most confident instance ends on top where masks overlap. Only the masked
        # pixels are converted and blended: a full-frame float copy costs more than the rest of the drawing on video.
        for i in np.argsort(detections.confidence):
            mask = detections.mask[i]
            blended = out[mask].astype(np.float32) * (1 - mask_alpha) + colors[i] * mask_alpha
            out[mask] = blended.round().clip(0, 255).astype(np.uint8)
    font_scale = max(0.3, thickness * 0.35)
    placed: list[tuple[int, int, int, int]] = []
    # Boxes and outlines first, then the labels from the most confident down, so that a label is never painted over
    # by a later box and the most confident object gets its label in the usual place.
    for i in range(len(detections)):
        color = tuple(int(v) for v in colors[i])
        if detections.mask is not None:
            contours, _ = cv2.findContours(detections.mask[i].astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, color, thickness)
        x0, y0, x1, y1 = (int(round(v)) for v in detections.xyxy[i])
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)
    for i in np.argsort(-detections.confidence, kind="stable"):
        color = tuple(int(v) for v in colors[i])
        name = detections.class_name[i] if i < len(detections.class_name) else str(int(detections.class_id[i]))
        label = f"{name} {detections.confidence[i]:.2f}"
        if detections.tracker_id is not None and detections.tracker_id[i] >= 0:
            label = f"#{int(detections.tracker_id[i])} {label}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        size = (tw + 2, th + base + 2)
        x, top = label_position(detections.xyxy[i], size, (width, height), placed)
        placed.append((x, top, x + size[0], top + size[1]))
        cv2.rectangle(out, (x, top), (x + size[0], top + size[1]), color, -1)
        cv2.putText(out, label, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1,
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
