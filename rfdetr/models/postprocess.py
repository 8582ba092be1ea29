"""Post-processing of raw outputs into per-image detections (spec section 8, rfdetr 1.11.2 behaviour)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Masks are upsampled this many detections at a time to bound peak memory at large image sizes (16 float32 masks of
# 640 x 640 are 26 MB: below glibc's largest mmap threshold, so the buffer is reused rather than faulted in afresh).
MASK_UPSAMPLE_CHUNK = 16


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] cxcywh -> xyxy, with w and h clamped at 0 first (1.11.2; the raw head can emit negative sizes)."""
    cx, cy, w, h = boxes.unbind(-1)
    w, h = w.clamp(min=0), h.clamp(min=0)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


class PostProcess(nn.Module):
    """Top-``num_select`` (query, class) pairs per image, boxes in pixels, optional binary masks.

    Args:
        num_select: detections kept per image before any thresholding.
        upsample_masks: resize masks to the target size (True) or keep them at the model's mask resolution.
    """

    def __init__(self, num_select: int = 300, upsample_masks: bool = True) -> None:
        super().__init__()
        self.num_select = num_select
        self.upsample_masks = upsample_masks

    @torch.no_grad()
    def forward(
        self,
        outputs: dict[str, torch.Tensor],
        target_sizes: torch.Tensor,
        score_threshold: float | None = None,
        keep: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        column_major_masks: bool = False,
    ) -> list[dict[str, torch.Tensor]]:
        """Args:
            outputs: ``pred_logits`` [B, Q, K], ``pred_boxes`` [B, Q, 4] (normalised cxcywh) and optionally
                ``pred_masks`` [B, Q, h, w] logits.
            target_sizes: [B, 2] (height, width) of the ORIGINAL images.
            score_threshold: segmentation only: drop detections scoring <= it before the costly mask upsampling.
            keep: ``keep(scores [n], labels [n]) -> bool [n]``, applied per image to every output (boxes too) after
                the top-``num_select`` ranking and before the mask upsampling, e.g.
                :meth:`rfdetr.data.coco_eval.CocoEvaluator.scorable` so that evaluation pastes only masks COCOeval
                can count.
            column_major_masks: return each image's masks as a transposed view of [n, 1, W, H] contiguous storage
                (same values and shape): the Fortran order pycocotools' RLE encoder reads, so that evaluation encodes
                without a transposing copy.

        Returns:
            Per image: ``scores`` [n], ``labels`` [n] (logit index, i.e. COCO id for COCO checkpoints), ``boxes``
            [n, 4] xyxy pixels clamped to the image, and ``masks`` [n, 1, H, W] bool for segmentation outputs.
            n = num_select (fewer with ``keep``, or with ``score_threshold`` on segmentation outputs), in descending
            score order.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        batch, _, num_logits = logits.shape
        prob = logits.sigmoid().flatten(1)  # [B, Q*K]
        # Stable sort: equal scores keep the lower flat index first, making the selection deterministic.
        scores, index = torch.sort(prob, dim=1, descending=True, stable=True)
        scores, index = scores[:, : self.num_select], index[:, : self.num_select]
        query = torch.div(index, num_logits, rounding_mode="floor")
        labels = index % num_logits

        xyxy = box_cxcywh_to_xyxy(boxes).gather(1, query[..., None].expand(-1, -1, 4))
        height, width = target_sizes.to(xyxy.dtype).unbind(-1)
        scale = torch.stack([width, height, width, height], dim=-1)[:, None]  # [B, 1, 4]
        xyxy = torch.minimum(xyxy * scale, scale).clamp(min=0)

        results = []
        for b in range(batch):
            result = {"scores": scores[b], "labels": labels[b], "boxes": xyxy[b]}
            queries = query[b]
            if keep is not None:
                selected = keep(result["scores"], result["labels"])
                result = {k: v[selected] for k, v in result.items()}
                queries = queries[selected]
            if "pred_masks" in outputs:
                if score_threshold is not None:
                    selected = result["scores"] > score_threshold
                    result = {k: v[selected] for k, v in result.items()}
                    queries = queries[selected]
                size = (int(target_sizes[b, 0]), int(target_sizes[b, 1]))
                result["masks"] = self._masks(outputs["pred_masks"][b, queries], size, column_major_masks)
            results.append(result)
        return results

    def _masks(self, mask_logits: torch.Tensor, size: tuple[int, int], column_major: bool = False) -> torch.Tensor:
        """[n, h, w] logits -> [n, 1, H, W] bool (logit > 0), bilinear to the image size if enabled.

        The chunks are thresholded straight into one preallocated output (no concatenation copy); with
        ``column_major`` that output is stored as [n, 1, W, H] and returned transposed.
        """
        mask_logits = mask_logits[:, None]
        if not self.upsample_masks:
            return mask_logits > 0
        count, (height, width) = mask_logits.shape[0], size
        if column_major:
            out = mask_logits.new_empty((count, 1, width, height), dtype=torch.bool).transpose(-1, -2)
        else:
            out = mask_logits.new_empty((count, 1, height, width), dtype=torch.bool)
        for start in range(0, count, MASK_UPSAMPLE_CHUNK):
            chunk = F.interpolate(mask_logits[start:start + MASK_UPSAMPLE_CHUNK], size=size, mode="bilinear",
                                  align_corners=False)
            torch.gt(chunk, 0, out=out[start:start + MASK_UPSAMPLE_CHUNK])
        return out
