"""render_detections: masks blended in, boxes and labels drawn, sizes checked."""

from __future__ import annotations

import numpy as np
import pytest

from rfdetr.deploy.detections import Detections
from rfdetr.deploy.visualize import class_color, render_detections


def test_render_draws_masks_and_boxes() -> None:
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    mask = np.zeros((1, 40, 60), dtype=bool)
    mask[0, 20:30, 30:45] = True
    det = Detections(np.array([[28.0, 18.0, 47.0, 32.0]]), np.array([0.9]), np.array([1]), ["square"], mask)
    out = render_detections(image, det, line_width=1)
    assert out.shape == image.shape and out.dtype == np.uint8 and np.array_equal(image, np.full_like(image, 100))
    inside = out[24:27, 34:41].reshape(-1, 3)
    expected = np.round(100 * 0.55 + np.array(class_color(1)) * 0.45)
    assert np.abs(inside - expected).max() <= 1  # blended mask colour (away from outline and label)
    assert (out[18, 28:48] != 100).any() and (out[0:5, 0:5] == 100).all()  # box edge drawn, far corner untouched


def test_render_without_masks_and_errors() -> None:
    image = np.zeros((10, 10, 3), dtype=np.uint8)
    empty = Detections.empty()
    assert np.array_equal(render_detections(image, empty), image)
    det = Detections(np.zeros((1, 4)), np.ones(1), np.zeros(1, dtype=np.int64), ["a"], np.zeros((1, 5, 5), bool))
    with pytest.raises(ValueError, match="original image"):
        render_detections(image, det)
    with pytest.raises(ValueError, match="RGB uint8"):
        render_detections(image.astype(np.float32), empty)
