"""Post-processing of raw outputs into per-image detections (spec section 8, rfdetr 1.11.2 behaviour)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Masks are upsampled this many detections at a time to bound peak memory at large image sizes.
MASK_UPSAMPLE_CHUNK = 32


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
    ) -> list[dict[str, torch.Tensor]]:
        """Args:
            outputs: ``pred_logits`` [B, Q, K], ``pred_boxes`` [B, Q, 4] (normalised cxcywh) and optionally
                ``pred_masks`` [B, Q, h, w] logits.
            target_sizes: [B, 2] (height, width) of the ORIGINAL images.
            score_threshold: segmentation only: drop detections scoring <= it before the costly mask upsampling.

        Returns:
            Per image: ``scores`` [n], ``labels`` [n] (logit index, i.e. COCO id for COCO checkpoints), ``boxes``
            [n, 4] xyxy pixels clamped to the image, and ``masks`` [n, 1, H, W] bool for segmentation outputs.
            n = num_select (fewer only with ``score_threshold`` on segmentation outputs).
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
            if "pred_masks" in outputs:
                keep = query[b]
                if score_threshold is not None:
                    selected = scores[b] > score_threshold
                    result = {k: v[selected] for k, v in result.items()}
                    keep = keep[selected]
                size = (int(target_sizes[b, 0]), int(target_sizes[b, 1]))
                result["masks"] = self._masks(outputs["pred_masks"][b, keep], size)
            results.append(result)
        return results

    def _masks(self, mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """[n, h, w] logits -> [n, 1, H, W] bool (logit > 0), bilinear to the image size if enabled."""
        mask_logits = mask_logits[:, None]
        if not self.upsample_masks:
            return mask_logits > 0
        if mask_logits.shape[0] == 0:
            return mask_logits.new_zeros((0, 1, *size), dtype=torch.bool)
        chunks = [
            F.interpolate(chunk, size=size, mode="bilinear", align_corners=False) > 0
            for chunk in mask_logits.split(MASK_UPSAMPLE_CHUNK)
        ]
        return torch.cat(chunks)
