"""RF-DETR model components, weight-compatible with the released rfdetr checkpoints.

Public entry points: :func:`build_model` (config -> :class:`RFDETRModel`), :class:`PostProcess` and
:func:`build_postprocessor`.
"""

from __future__ import annotations

from rfdetr.config import ModelConfig
from rfdetr.models.detector import Backbone, RFDETRModel, build_model
from rfdetr.models.postprocess import PostProcess
from rfdetr.models.segmentation_head import SegmentationHead

__all__ = ["Backbone", "PostProcess", "RFDETRModel", "SegmentationHead", "build_model", "build_postprocessor"]


def build_postprocessor(cfg: ModelConfig) -> PostProcess:
    """The post-processor matching ``cfg`` (keeps ``cfg.num_select`` detections per image)."""
    return PostProcess(num_select=cfg.num_select)
