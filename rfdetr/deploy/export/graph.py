"""The graph every export format traces: the single-group inference forward at a fixed square resolution.

``ExportForward`` wraps a model's ``forward_export`` (pixels -> boxes, logits[, masks]); the DINOv2 position
embeddings, which eager mode resizes with an antialiased bicubic interpolation when the input grid differs from the
stored one, are computed once at the export resolution (:func:`bake_position_embeddings`) so that no converter sees
that resize.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rfdetr.models.dinov2 import Embeddings

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "ExportForward", "bake_position_embeddings", "has_masks", "patch_size",
           "prepare_export"]

# The names every exported file gives its input and outputs (the contract the runners rely on): ``input`` [B, 3, R, R];
# ``dets`` [B, Q, 4], ``labels`` [B, Q, K] and, with masks, ``masks`` [B, Q, R/4, R/4].
INPUT_NAME = "input"
OUTPUT_NAMES: tuple[str, str, str] = ("dets", "labels", "masks")


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

    @property
    def output_names(self) -> tuple[str, ...]:
        """The names of :meth:`forward`'s outputs, in order (:data:`OUTPUT_NAMES` without ``masks`` when dropped)."""
        return OUTPUT_NAMES[: 3 if self.with_masks else 2]


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


def prepare_export(
    model: nn.Module, resolution: int, batch_size: int = 1, with_masks: bool = True, seed: int = 0
) -> tuple[ExportForward, torch.Tensor]:
    """The module every format traces and an example input for it; ``model`` itself is never modified.

    A deep copy on the CPU in float32 and eval mode, its position embeddings baked at ``resolution``, wrapped in
    :class:`ExportForward`. Parameters keep ``requires_grad``: without autograd the eager code takes in-place fast
    paths (residual ``addcmul_``, ``gelu_``, reused workspaces) that tracers would have to rewrite.

    Args:
        model: an :class:`~rfdetr.models.detector.RFDETRModel` or a stage-2 :class:`~rfdetr.models.segmenter.Segmenter`.
        resolution: square input side R (a multiple of the patch size).
        batch_size: batch of the example.
        with_masks: keep the mask output when the model has one.
        seed: seed of the example's random pixels.

    Returns:
        (module, example [batch_size, 3, R, R] float32).

    Raises:
        ValueError: bad batch size, or a resolution that is not a positive multiple of the patch size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    module = copy.deepcopy(model).cpu().float().eval()
    module.requires_grad_(True)
    patch = patch_size(module)
    if resolution <= 0 or resolution % patch:
        raise ValueError(f"resolution must be a positive multiple of the patch size {patch}, got {resolution}")
    bake_position_embeddings(module, resolution // patch)
    wrapper = ExportForward(module, with_masks and has_masks(module)).eval()
    example = torch.randn(batch_size, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
    return wrapper, example
