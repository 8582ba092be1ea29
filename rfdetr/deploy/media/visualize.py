"""Draw detections (boxes, labels, instance masks) on an image, for the demo and quick looks at predictions.

The primitives (:func:`class_color`, :func:`label_position`, the drawing itself) live in :mod:`rfdetr.util.drawing`,
shared with the training run folder's pictures; they are re-exported here.
"""

from __future__ import annotations

import numpy as np

from rfdetr.deploy.runtime.detections import Detections
from rfdetr.util.drawing import class_color, draw_instances, label_position

__all__ = ["class_color", "label_position", "render_detections"]


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
    keys = detections.class_id
    if detections.tracker_id is not None:  # -1: not (yet) in a track, coloured by class
        keys = np.where(detections.tracker_id >= 0, detections.tracker_id, detections.class_id)
    labels = []
    for i in range(len(detections)):
        name = detections.class_name[i] if i < len(detections.class_name) else str(int(detections.class_id[i]))
        label = f"{name} {detections.confidence[i]:.2f}"
        if detections.tracker_id is not None and detections.tracker_id[i] >= 0:
            label = f"#{int(detections.tracker_id[i])} {label}"
        labels.append(label)
    return draw_instances(image, detections.xyxy, keys, labels, scores=detections.confidence, masks=detections.mask,
                          mask_alpha=mask_alpha, line_width=line_width)


