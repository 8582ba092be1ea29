"""The graph every export format traces: the single-group inference forward at a fixed square resolution.

``ExportForward`` wraps a model's ``forward_export`` (pixels -> boxes, logits[, masks]); the DINOv2 position
embeddings, which eager mode resizes with an antialiased bicubic interpolation when the input grid differs from the
stored one, are computed once at the export resolution (:func:`bake_position_embeddings`) so that no converter sees
that resize.
"""

from __future__ import annotations

import torch
from torch import nn

from rfdetr.models.dinov2 import Embeddings

__all__ = ["ExportForward", "bake_position_embeddings", "has_masks", "patch_size"]


class ExportForward(nn.Module):
    """Wraps a model's single-group export graph so that it can be traced: pixels -> (boxes, logits[, masks]).

    Args:
        model: an :class:`~rfdetr.models.detector.RFDETRModel` or :class:`~rfdetr.models.segmenter.Segmenter`
            (anything with ``forward_export``).
        with_masks: keep the mask output when the model has one; ``False`` drops it (and its branch of the graph).
    """

    def __init__(self, model: nn.Module, with_masks: bool = True) -> None:
        super().__init__()
        self.model = model
        self.with_masks = with_masks

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Args: pixels [B, 3, H, W] normalised.

        Returns: boxes [B, Q, 4] cxcywh, logits [B, Q, K] and, with masks, mask logits [B, Q, H/4, W/4].
        """
        outputs = self.model.forward_export(pixels)
        return outputs if self.with_masks else outputs[:2]


def bake_position_embeddings(model: nn.Module, grid: int) -> int:
    """Replace every DINOv2 position embedding of ``model`` (in place) by its value at a ``grid x grid`` patch grid.

    Afterwards a square input of ``grid * patch_size`` pixels uses the stored table directly, so no (antialiased
    bicubic) resize is traced. The values are exactly what the eager forward computes at that size.

    Args:
        model: a model, modified in place (export a copy).
        grid: patches per side at the export resolution.

    Returns:
        The number of embedding tables replaced.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, Embeddings):
            with torch.no_grad():
                table = module.interpolate_pos_encoding(grid, grid, square_input=True)  # [1, 1 + grid^2, C]
            module.position_embeddings = nn.Parameter(table.detach().clone(), requires_grad=False)
            module.pos_grid = grid
            count += 1
    return count


def patch_size(model: nn.Module) -> int:
    """The ViT patch size of an RF-DETR model (input sides must be multiples of it).

    Raises:
        ValueError: ``model`` has no DINOv2 embeddings.
    """
    for module in model.modules():
        if isinstance(module, Embeddings):
            return int(module.patch_embeddings.projection.kernel_size[0])
    raise ValueError(f"{type(model).__name__} has no DINOv2 embeddings: not an RF-DETR model")


def has_masks(model: nn.Module) -> bool:
    """Whether ``forward_export`` returns masks: a single-stage segmentation head or a stage-2 mask head."""
    return getattr(model, "segmentation_head", None) is not None or getattr(model, "mask_head", None) is not None
