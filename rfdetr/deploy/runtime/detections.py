"""Per-image prediction results, independent of any visualisation library."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Detections:
    """Detections of one image, in original-image pixels, sorted by descending confidence.

    Attributes:
        xyxy: float32 [N, 4] boxes (x1, y1, x2, y2).
        confidence: float32 [N] sigmoid scores.
        class_id: int64 [N] class indices (COCO category ids for the official COCO checkpoints).
        class_name: N names, one per detection.
        mask: bool [N, H, W] instance masks at the original image size, or ``None`` for detection models.
        tracker_id: int64 [N] track ids given by a tracker (:mod:`rfdetr.deploy.media.track`), or ``None`` untracked.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    class_name: list[str] = field(default_factory=list)
    mask: np.ndarray | None = None
    tracker_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        self.class_name = list(self.class_name)
        n = len(self.xyxy)
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool)
            if self.mask.ndim != 3 or len(self.mask) != n:
                raise ValueError(f"mask must be [N, H, W] with N={n}, got shape {self.mask.shape}")
        if self.tracker_id is not None:
            self.tracker_id = np.asarray(self.tracker_id, dtype=np.int64).reshape(-1)
            if len(self.tracker_id) != n:
                raise ValueError(f"tracker_id has {len(self.tracker_id)} entries for {n} detections")
        if not (len(self.confidence) == len(self.class_id) == n):
            raise ValueError(
                f"inconsistent lengths: xyxy {n}, confidence {len(self.confidence)}, class_id {len(self.class_id)}"
            )
        if self.class_name and len(self.class_name) != n:
            raise ValueError(f"class_name has {len(self.class_name)} entries for {n} detections")

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls, with_mask_size: tuple[int, int] | None = None) -> Detections:
        """No detections; with ``with_mask_size=(H, W)`` the mask is an empty [0, H, W] array."""
        mask = None if with_mask_size is None else np.zeros((0, *with_mask_size), dtype=bool)
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), [], mask)

    def __getitem__(self, index: Any) -> Detections:
        """Subset by a boolean mask, an index array or a slice (e.g. ``dets[dets.confidence > 0.5]``)."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Detections(
            self.xyxy[idx],
            self.confidence[idx],
            self.class_id[idx],
            [self.class_name[i] for i in idx] if self.class_name else [],
            None if self.mask is None else self.mask[idx],
            None if self.tracker_id is None else self.tracker_id[idx],
        )

    def to_supervision(self) -> Any:
        """Convert to ``supervision.Detections`` (class names go to ``data["class_name"]``, track ids to
        ``tracker_id``).

        Raises:
            ImportError: ``supervision`` is not installed.
        """
        sv = _import_supervision("Detections.to_supervision()")
        data = {"class_name": np.array(self.class_name)} if self.class_name else {}
        return sv.Detections(
            xyxy=self.xyxy, confidence=self.confidence, class_id=self.class_id, mask=self.mask,
            tracker_id=self.tracker_id, data=data,
        )

    @classmethod
    def from_supervision(cls, detections: Any, class_names: Sequence[str] | None = None) -> Detections:
        """Convert from ``supervision.Detections`` (the inverse of :meth:`to_supervision`).

        Args:
            detections: a ``supervision.Detections``; a missing ``confidence`` becomes 1 and a missing ``class_id``
                0.
            class_names: names indexed by class id, used when ``detections.data`` has no ``class_name``.

        Returns:
            The detections sorted by descending confidence (this class's invariant); ``tracker_id`` and masks kept.
        """
        n = len(detections.xyxy)
        confidence = np.ones(n) if detections.confidence is None else detections.confidence
        class_id = np.zeros(n, dtype=np.int64) if detections.class_id is None else detections.class_id
        names = detections.data.get("class_name") if detections.data else None
        if names is not None:
            class_name = [str(v) for v in names]
        elif class_names is not None:
            class_name = [class_names[int(c)] if 0 <= int(c) < len(class_names) else f"class_{int(c)}"
                          for c in class_id]
        else:
            class_name = []
        out = cls(detections.xyxy, confidence, class_id, class_name, detections.mask, detections.tracker_id)
        order = np.argsort(-out.confidence, kind="stable")
        return out[order]


def _import_supervision(what: str) -> Any:
    """``import supervision``, or an ImportError saying which pip command installs it."""
    try:
        import supervision as sv
    except ImportError as err:
        raise ImportError(
            f"{what} needs the optional package 'supervision': pip install 'rtdetr-seg[video]' "
            "(or pip install supervision==0.31.2)"
        ) from err
    return sv
