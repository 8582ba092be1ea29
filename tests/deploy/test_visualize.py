"""render_detections: masks blended in, boxes and labels drawn, sizes checked."""

from __future__ import annotations

import numpy as np
import pytest

from rfdetr.deploy.media.visualize import class_color, label_position, render_detections
from rfdetr.deploy.runtime.detections import Detections


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


def _label_rows(out: np.ndarray, class_id: int, box_rows: tuple[int, int]) -> np.ndarray:
    """Rows of a class's filled label rectangle: >= 10 pixels of its exact colour, the box's top and bottom edges
    (1 px lines of the same colour) left out."""
    rows = np.nonzero((out == np.array(class_color(class_id), dtype=np.uint8)).all(-1).sum(1) >= 10)[0]
    return np.setdiff1d(rows, box_rows)


def test_labels_never_hide_each_other() -> None:
    """DETR's top-k gives one query's box with two classes (the demo's circle scored as 'square' and 'circle'): both
    labels stay readable, the more confident one in the usual place above the box, the other moved."""
    image = np.full((200, 300, 3), 255, dtype=np.uint8)
    box = [100.0, 80.0, 200.0, 180.0]
    det = Detections(np.array([box, box]), np.array([0.43, 0.64]), np.array([0, 1]), ["circle", "square"])
    out = render_detections(image, det, line_width=1)
    rows1, rows2 = _label_rows(out, 1, (80, 180)), _label_rows(out, 0, (80, 180))
    assert rows1.max() < 80  # 'square 0.64' above the box, as a single label would be
    assert len(rows2) > 5 and not np.intersect1d(rows1, rows2).size  # 'circle 0.43' elsewhere, not under it
    # Three labels on one box at the image's top-left corner: each spot overlaps none of the earlier ones.
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(3):
        x, y = label_position(np.array([0.0, 0.0, 60.0, 50.0]), (40, 12), (100, 100), placed)
        rect = (x, y, x + 40, y + 12)
        assert 0 <= x <= 60 and 0 <= y <= 88
        assert all(rect[2] <= p[0] or p[2] <= rect[0] or rect[3] <= p[1] or p[3] <= rect[1] for p in placed)
        placed.append(rect)
