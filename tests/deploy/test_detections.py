"""``Detections`` <-> ``supervision.Detections``: boxes, scores, class ids, names, masks and track ids survive."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from rfdetr.deploy.runtime.detections import Detections

sv = pytest.importorskip("supervision", reason="needs supervision (pip install 'rtdetr-seg[video]')")


def _detections(tracked: bool = False) -> Detections:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 12, 16)) > 0.5
    return Detections(
        xyxy=[[1, 2, 5, 7], [0, 0, 16, 12], [3.5, 4.25, 9, 11]],
        confidence=[0.9, 0.6, 0.3],
        class_id=[2, 0, 2],
        class_name=["triangle", "circle", "triangle"],
        mask=masks,
        tracker_id=[4, 1, 7] if tracked else None,
    )


def test_to_supervision() -> None:
    ours = _detections(tracked=True)
    theirs = ours.to_supervision()
    assert isinstance(theirs, sv.Detections) and len(theirs) == 3
    np.testing.assert_array_equal(theirs.xyxy, ours.xyxy)
    np.testing.assert_array_equal(theirs.confidence, ours.confidence)
    np.testing.assert_array_equal(theirs.class_id, ours.class_id)
    np.testing.assert_array_equal(theirs.mask, ours.mask)
    np.testing.assert_array_equal(theirs.tracker_id, [4, 1, 7])
    assert list(theirs.data["class_name"]) == ["triangle", "circle", "triangle"]
    plain = Detections(np.zeros((1, 4)), [0.5], [1]).to_supervision()  # no names, no masks, untracked
    assert plain.mask is None and plain.tracker_id is None and "class_name" not in plain.data


@pytest.mark.parametrize("tracked", [False, True])
def test_round_trip(tracked: bool) -> None:
    ours = _detections(tracked)
    back = Detections.from_supervision(ours.to_supervision())
    np.testing.assert_array_equal(back.xyxy, ours.xyxy)
    np.testing.assert_array_equal(back.confidence, ours.confidence)
    np.testing.assert_array_equal(back.class_id, ours.class_id)
    assert back.class_name == ours.class_name
    np.testing.assert_array_equal(back.mask, ours.mask)
    if tracked:
        np.testing.assert_array_equal(back.tracker_id, ours.tracker_id)
    else:
        assert back.tracker_id is None
    empty = Detections.from_supervision(Detections.empty((12, 16)).to_supervision())
    assert len(empty) == 0 and empty.mask.shape == (0, 12, 16)


def test_from_supervision_names_order_and_defaults() -> None:
    theirs = sv.Detections(xyxy=np.array([[0, 0, 2, 2], [1, 1, 4, 4]], float), confidence=np.array([0.2, 0.8]),
                           class_id=np.array([1, 5]))
    ours = Detections.from_supervision(theirs, class_names=["a", "b"])
    np.testing.assert_array_equal(ours.confidence, np.float32([0.8, 0.2]))  # sorted, this class's invariant
    assert ours.class_name == ["class_5", "b"] and ours.mask is None and ours.class_id.dtype == np.int64
    bare = Detections.from_supervision(sv.Detections(xyxy=np.array([[0, 0, 1, 1]], float)))
    assert bare.confidence.tolist() == [1.0] and bare.class_id.tolist() == [0] and bare.class_name == []


def test_missing_supervision_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "supervision", None)
    with pytest.raises(ImportError, match=r"pip install 'rtdetr-seg\[video\]'"):
        _detections().to_supervision()
