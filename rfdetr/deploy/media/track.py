"""Multi-object tracking across video frames: ByteTrack from Roboflow's ``trackers`` package.

supervision 0.31 no longer has its ``ByteTrack``: it lives on in Roboflow's ``trackers`` package as
``ByteTrackTracker``, which takes and returns ``supervision.Detections``; both come with the optional extra ``video``
(``pip install 'rtdetr-seg[video]'``). Each call of :meth:`Tracker.update` converts our
:class:`~rfdetr.deploy.runtime.detections.Detections` there and back, so a tracked detection keeps its own mask, class
and score (the tracker selects detections by index, it never mixes fields of different detections).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.ops import nms

from rfdetr.deploy.runtime.detections import Detections
from rfdetr.util.optional import OptionalFeature

__all__ = ["SAME_OBJECT_IOU", "TRACKING", "TRACK_INSTALL", "Tracker", "one_per_object", "require_tracking"]

# Two detections whose boxes overlap this much are one object. DETR's top-k over queries x classes often returns one
# query's box twice, with two classes (circle 0.6 and square 0.3 on the same shape): a tracker given both starts two
# tracks on one object, and which of them the object "is" flips from frame to frame.
SAME_OBJECT_IOU = 0.8

TRACKING = OptionalFeature(
    name="--track", packages=("supervision", "trackers"), pip=("supervision==0.31.2", "trackers==2.6.1"),
    extra="video", label="ByteTrack from Roboflow's trackers package",
)
# The pip command (one place for the pins: the feature above).
TRACK_INSTALL = TRACKING.install


def require_tracking() -> Any:
    """The ``trackers`` module, or :class:`~rfdetr.util.optional.MissingPackageError` whose one line says how to
    install it."""
    TRACKING.require()
    import trackers

    return trackers


def one_per_object(detections: Detections, iou: float = SAME_OBJECT_IOU) -> Detections:
    """The detections without the lower-scored duplicates of an object (class-agnostic NMS at ``iou``), most
    confident first."""
    if len(detections) < 2:
        return detections
    keep = nms(torch.from_numpy(detections.xyxy).float(), torch.from_numpy(detections.confidence).float(), iou)
    return detections[keep.numpy()]


class Tracker:
    """ByteTrack over the frames of one video; ids start at 1 and are never reused within a video.

    ByteTrack confirms a track on its second frame: a detection that starts a track (or that no track takes) is
    kept with ``tracker_id`` -1, and its object gets its id from the next frame on.

    Args:
        fps: frames per second of the frames passed to :meth:`update` (the source's rate divided by the stride),
            so that ``lost_seconds`` means seconds.
        threshold: the detections' score threshold; any detection above it may start a track (ByteTrack's own
            default of 0.7 would silently drop the tracks of a model whose scores sit lower).
        lost_seconds: how long a track that is not seen is kept to be found again.

    Raises:
        ImportError: ``supervision`` or ``trackers`` is missing (the message gives the pip command).
    """

    def __init__(self, fps: float, threshold: float = 0.5, lost_seconds: float = 1.0) -> None:
        trackers = require_tracking()
        self._tracker = trackers.ByteTrackTracker(
            lost_track_buffer=max(1, round(lost_seconds * fps)),
            frame_rate=fps,
            track_activation_threshold=threshold,
            # Ids from the first frame an object is seen: the video and JSON show every kept detection.
            minimum_consecutive_frames=1,
            high_conf_det_threshold=max(threshold, 0.1),
        )

    def update(self, detections: Detections) -> Detections:
        """Assign track ids to one frame's detections.

        Returns:
            The detections, one per object (:func:`one_per_object`: the class an object is drawn and tracked with is
            its most confident one), sorted by descending confidence, with ``tracker_id`` set (-1: not in a
            confirmed track yet).
        """
        tracked = self._tracker.update(one_per_object(detections).to_supervision())
        if len(tracked) == 0:
            empty = Detections.empty(None if detections.mask is None else detections.mask.shape[1:])
            empty.tracker_id = empty.class_id.copy()
            return empty
        out = Detections.from_supervision(tracked)
        ids = out.tracker_id if out.tracker_id is not None else np.full(len(out), -1)
        # trackers counts from 0; people (and Ultralytics) count objects from 1.
        out.tracker_id = np.where(ids >= 0, ids + 1, -1)
        return out
