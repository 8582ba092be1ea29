"""Stage 2 by composition: an RF-DETR detector plus a mask head that reads the detector's ``forward_features``.

The detector stays an unchanged :class:`rfdetr.models.detector.RFDETRModel` (same module, same state-dict keys); the
mask head only consumes what its ``forward_features`` returns. Frozen (stage 2), the detector never trains: its
parameters have ``requires_grad=False``, it stays in eval mode whatever ``train()`` is called with (one query group,
the exact function used at inference), and it runs under ``torch.no_grad()`` so no activation is kept for backward.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from rfdetr.models.detector import RFDETRModel
from rfdetr.models.layers import apply_box_delta
from rfdetr.models.mask_head import MaskHead, MaskHeadNano

__all__ = ["DetectorOutputs", "Segmenter"]

# What the mask head and the loss need from the detector, per batch (L decoder layers, N queries):
#   features [B, D, h, w]  projector map the decoder attends to
#   hs       [L, B, N, D]  decoder outputs after the shared decoder norm
#   logits   [L, B, N, K]  class logits per layer
#   boxes    [L, B, N, 4]  normalised cxcywh per layer
# and, only for a trainable detector (single-stage), enc_features / enc_logits / enc_boxes [B, N, *].
DetectorOutputs = dict[str, torch.Tensor]


class Segmenter(nn.Module):
    """A detector and a mask head; with ``freeze_detector`` this is the stage-2 model.

    Args:
        detector: a detection :class:`RFDETRModel` (without its own segmentation head).
        mask_head: :class:`MaskHead`, :class:`MaskHeadNano` or
            :class:`~rfdetr.models.mask_head_dynamic.MaskHeadDynamic` built for the detector's width and depth; a
            head whose ``reads`` names ``"pixels"`` / ``"boxes"`` gets the input and the predicted boxes as well.
        freeze_detector: stage 2 (frozen, eval mode, no_grad) or single-stage (everything trains).
    """

    def __init__(self, detector: RFDETRModel, mask_head: MaskHead | MaskHeadNano | nn.Module,
                 freeze_detector: bool = True) -> None:
        super().__init__()
        if detector.segmentation_head is not None:
            raise ValueError("the detector already has a segmentation head; build it without one for a Segmenter")
        self.detector = detector
        self.mask_head = mask_head
        self.freeze_detector = freeze_detector
        if freeze_detector:
            detector.requires_grad_(False)
            detector.eval()

    def train(self, mode: bool = True) -> Segmenter:
        """Train or eval mode; a frozen detector stays in eval mode (inference behaviour, one query group)."""
        super().train(mode)
        if self.freeze_detector:
            self.detector.eval()
        return self

    def detect(self, pixels: torch.Tensor) -> DetectorOutputs:
        """Run the detector once (under ``no_grad`` when frozen).

        Args:
            pixels: [B, 3, H, W] normalised images.

        Returns:
            See :data:`DetectorOutputs`.
        """
        grad = torch.no_grad() if self.freeze_detector else contextlib.nullcontext()
        with grad:
            feats = self.detector.forward_features(pixels)
            hs = feats["hs"]
            out = {
                "features": feats["features"][0],
                "hs": hs,
                "logits": self.detector.class_embed(hs),
                "boxes": apply_box_delta(self.detector.bbox_embed(hs), feats["references"]),
            }
            if not self.freeze_detector:
                out.update(enc_features=feats["enc_features"], enc_logits=feats["enc_logits"],
                           enc_boxes=feats["enc_boxes"])
        return out

    def _head_inputs(self, pixels: torch.Tensor, boxes: Any) -> dict[str, Any]:
        """The extra keyword inputs the head declares in ``reads`` (none for MaskHead / MaskHeadNano)."""
        reads = getattr(self.mask_head, "reads", ())
        return {k: v for k, v in (("pixels", pixels), ("boxes", boxes)) if k in reads}

    def forward(self, pixels: torch.Tensor, detections: DetectorOutputs | None = None) -> dict[str, Any]:
        """Detections plus masks.

        Args:
            pixels: [B, 3, H, W] normalised images (their size sets the mask size H/4 x W/4).
            detections: precomputed :meth:`detect` outputs for these pixels (the feature cache); computed if None.

        Returns dict (N queries; one group when frozen):
            ``pred_logits`` [B, N, K], ``pred_boxes`` [B, N, 4] of the last decoder layer, and ``pred_masks``:
            in training a :class:`rfdetr.losses.mask_logits.SparseMaskLogits` per layer (the loss point-samples it),
            with ``aux_outputs`` for the earlier layers (and ``enc_outputs`` when the detector trains); in eval the
            dense last-layer logits [B, N, H/4, W/4] only.
        """
        det = self.detect(pixels) if detections is None else detections
        image_size = (pixels.shape[-2], pixels.shape[-1])
        layers = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(det["logits"], det["boxes"], strict=True)]
        if not self.training:
            out: dict[str, Any] = dict(layers[-1])
            out["pred_masks"] = self.mask_head.forward_last(det["features"], det["hs"][-1], image_size,
                                                            **self._head_inputs(pixels, det["boxes"][-1]))
            return out
        masks = self.mask_head.forward_sparse(det["features"], list(det["hs"]), image_size,
                                              **self._head_inputs(pixels, list(det["boxes"])))
        for layer, mask in zip(layers, masks, strict=True):
            layer["pred_masks"] = mask
        out = dict(layers[-1])
        out["aux_outputs"] = layers[:-1]
        if "enc_logits" in det:
            out["enc_outputs"] = {
                "pred_logits": det["enc_logits"], "pred_boxes": det["enc_boxes"],
                "pred_masks": self.mask_head.forward_encoder_sparse(det["features"], det["enc_features"], image_size,
                                                                    **self._head_inputs(pixels, det["enc_boxes"])),
            }
        return out

    def forward_export(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Export / traced-inference graph: (boxes [B, N, 4], logits [B, N, K], masks [B, N, H/4, W/4])."""
        feats = self.detector.forward_features(pixels, num_groups=1)
        last = feats["hs"][-1]
        boxes = apply_box_delta(self.detector.bbox_embed(last), feats["references"])
        image_size = (pixels.shape[-2], pixels.shape[-1])
        masks = self.mask_head.forward_last(feats["features"][0], last, image_size,
                                             **self._head_inputs(pixels, boxes))
        return boxes, self.detector.class_embed(last), masks

    def mask_head_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's tensors under its checkpoint prefix (``segmentation_head.`` or ``mask_head.``)."""
        prefix = self.mask_head.key_prefix
        return {prefix + k: v for k, v in self.mask_head.state_dict().items()}

    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """Every detector key verbatim plus the mask head's prefixed keys: the ``model`` entry of a checkpoint."""
        return {**self.detector.state_dict(), **self.mask_head_state_dict()}

    def load_checkpoint_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`checkpoint_state_dict`; strict for both parts.

        Raises:
            RuntimeError: keys missing or unexpected (``load_state_dict``'s message names them).
        """
        prefix = self.mask_head.key_prefix
        head = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        detector = {k: v for k, v in state.items() if not k.startswith(prefix)}
        self.detector.load_state_dict(detector, strict=True)
        self.mask_head.load_state_dict(head, strict=True)
