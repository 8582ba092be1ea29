"""rfdetr's instance-segmentation head (spec section 7), key prefix ``segmentation_head.``.

The stride-``patch`` projector map is resized to 1/4 of the input; one depthwise ConvNeXt-style block per decoder
layer refines it cumulatively, and every query's mask logits are a dot product between the projected map and the
query's MLP-processed decoder feature, plus one learned scalar bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.losses.mask_logits import SparseMaskLogits


class DepthwiseConvBlock(nn.Module):
    """ConvNeXt block without its MLP: dw3x3 -> LayerNorm (eps 1e-6) -> Linear -> GELU, plus the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, D, H, W]. Returns: [B, D, H, W] (channels-last in memory at inference)."""
        if torch.jit.is_tracing():
            # ONNX and OpenVINO trace this forward. There the block stays channels-first: LayerNorm over dim 1 and
            # the Linear as a 1x1 convolution, the same arithmetic without the two permutes, which OpenVINO's CPU
            # plugin runs as reference-kernel transposes around every block (and, in an INT8 file, around each
            # quantized input). Measured on seg-nano at 312 px, 2 threads, bf16 hint: INT8 IR 95.7 -> 87.8 ms,
            # float32 IR 143 -> 131 ms; onnxruntime 267 -> 262 ms; outputs within 1.2e-5 of the permuted graph.
            y = self.dwconv(x)
            centred = y - y.mean(1, keepdim=True)
            y = centred * torch.rsqrt(centred.square().mean(1, keepdim=True) + self.norm.eps)
            y = y * self.norm.weight[:, None, None] + self.norm.bias[:, None, None]
            y = F.gelu(F.conv2d(y, self.pwconv1.weight[:, :, None, None], self.pwconv1.bias))
            return x + y
        if torch.is_grad_enabled() or self.training:
            y = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC so LayerNorm / Linear act on channels
            y = F.gelu(self.pwconv1(self.norm(y)))
            return x + y.permute(0, 3, 1, 2)
        # Inference: a channels-last conv output makes the NHWC view contiguous, so LayerNorm and the Linear need no
        # copy, and GELU and the residual run in place: two [B, H, W, D] buffers per block instead of five.
        y = self.dwconv(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
        y = torch.ops.aten.gelu_(self.pwconv1(self.norm(y)))
        return y.add_(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """Residual pre-norm MLP on query features: LayerNorm (eps 1e-5) -> D->4D -> GELU -> 4D->D.

    Keys: ``norm_in``, ``layers.0``, ``layers.2`` (index 1 is the parameter-free GELU).
    """

    def __init__(self, dim: int, expansion: int = 4) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.layers = nn.Sequential(nn.Linear(dim, dim * expansion), nn.GELU(), nn.Linear(dim * expansion, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [..., D]. Returns: [..., D]."""
        return x + self.layers(self.norm_in(x))


class SegmentationHead(nn.Module):
    """Per-layer mask logits from the projector map and the decoder's query features.

    Args:
        dim: D, width of both the projector map and the queries.
        num_blocks: one depthwise block per decoder layer (= dec_layers).
        downsample_ratio: masks are produced at ``(H // ratio, W // ratio)`` of the network input.
    """

    def __init__(self, dim: int, num_blocks: int, downsample_ratio: int = 4) -> None:
        super().__init__()
        self.downsample_ratio = downsample_ratio
        self.blocks = nn.ModuleList(DepthwiseConvBlock(dim) for _ in range(num_blocks))
        self.spatial_features_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.query_features_block = MLPBlock(dim)
        self.query_features_proj = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.zeros(1))

    def resize(self, spatial_features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Bilinear (align_corners=False) resize of [B, D, h, w] to [B, D, H/ratio, W/ratio]."""
        size = (image_size[0] // self.downsample_ratio, image_size[1] // self.downsample_ratio)
        return F.interpolate(spatial_features, size=size, mode="bilinear", align_corners=False)

    def project_queries(self, query_features: torch.Tensor) -> torch.Tensor:
        """Args: query_features [B, N, D]. Returns: [B, N, D] mask embeddings."""
        return self.query_features_proj(self.query_features_block(query_features))

    def masks(self, pixels: torch.Tensor, query_features: torch.Tensor) -> torch.Tensor:
        """Dense mask logits ``<proj(q), P x + p> + bias``, computed in the factorised form of :meth:`factorised`.

        Moving the 1x1 ``spatial_features_proj`` onto the N queries saves a D x D product per pixel of the
        [B, D, H/ratio, W/ratio] map (about 40 ms per image for seg-nano on a 2-core CPU); the logits agree with the
        per-pixel projection to float32 rounding.

        Args:
            pixels: [B, D, h, w] map before ``spatial_features_proj``.
            query_features: [B, N, D] decoder (or two-stage) query features.

        Returns:
            [B, N, h, w] logits.
        """
        factors = self.factorised(pixels, query_features)
        batch, dim, height, width = pixels.shape
        if pixels.is_contiguous():
            flat = pixels.reshape(batch, dim, -1)
        else:  # channels-last (inference blocks): the transposed [B, HW, D] view, which BLAS reads without a copy
            flat = pixels.permute(0, 2, 3, 1).reshape(batch, -1, dim).transpose(1, 2)
        logits = torch.baddbmm(factors.bias.unsqueeze(-1), factors.query_features, flat)
        return logits.view(batch, -1, height, width)

    def forward(
        self, spatial_features: torch.Tensor, query_features: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> list[torch.Tensor]:
        """Mask logits for every decoder layer.

        Args:
            spatial_features: [B, D, h, w] projector level-0 map (the decoder memory before flattening).
            query_features: one [B, N, D] tensor per decoder layer (outputs after the shared decoder norm); at most
                ``num_blocks`` of them, layer l is paired with block l.
            image_size: (H, W) of the network input.

        Returns:
            One [B, N, H/ratio, W/ratio] logit tensor per entry of ``query_features``.
        """
        if len(query_features) > len(self.blocks):
            raise ValueError(f"got {len(query_features)} query sets for {len(self.blocks)} blocks")
        x = self.resize(spatial_features, image_size)
        outputs = []
        for block, queries in zip(self.blocks, query_features, strict=False):
            x = block(x)  # cumulative: each block refines the previous block's output
            outputs.append(self.masks(x, queries))
        return outputs

    def forward_last(
        self, spatial_features: torch.Tensor, query_features: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Masks of the last decoder layer only (export / inference): all blocks, one dot product.

        Args: spatial_features [B, D, h, w]; query_features [B, N, D] last-layer decoder outputs.
        Returns: [B, N, H/ratio, W/ratio] logits.
        """
        x = self.resize(spatial_features, image_size)
        for block in self.blocks:
            x = block(x)
        return self.masks(x, query_features)

    def forward_encoder(
        self, spatial_features: torch.Tensor, query_features: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Masks of the two-stage proposals: same projections but the blocks are skipped (rfdetr 1.11.2 path).

        Args: spatial_features [B, D, h, w]; query_features [B, N, D] selected two-stage memory features.
        Returns: [B, N, H/ratio, W/ratio] logits.
        """
        return self.masks(self.resize(spatial_features, image_size), query_features)

    def factorised(self, pixels: torch.Tensor, query_features: torch.Tensor) -> SparseMaskLogits:
        """Mask logits ``<proj(q), P x + p> + bias`` (P, p: ``spatial_features_proj``) in factorised form.

        The 1x1 projection moves to the queries, ``<P^T proj(q), x> + (<proj(q), p> + bias)``: the same logits, but
        the D x D product runs on the N queries instead of every pixel of the [B, D, H/ratio, W/ratio] map.

        Args:
            pixels: [B, D, H/ratio, W/ratio] map before ``spatial_features_proj``.
            query_features: [B, N, D] decoder (or two-stage) query features.

        Returns:
            :class:`SparseMaskLogits` with spatial features ``pixels``, query features [B, N, D] and a per-query bias
            [B, N].
        """
        queries = self.project_queries(query_features)  # [B, N, D]
        weight = self.spatial_features_proj.weight.flatten(1)  # [D_out, D_in]
        bias = queries @ self.spatial_features_proj.bias + self.bias  # [B, N]
        return SparseMaskLogits(pixels, queries @ weight, bias)

    def forward_sparse(
        self, spatial_features: torch.Tensor, query_features: Sequence[torch.Tensor], image_size: tuple[int, int]
    ) -> list[SparseMaskLogits]:
        """Factorised mask logits of every decoder layer (training; rfdetr's ``sparse_forward``).

        The same function as :meth:`forward`, but the dense [B, N, H/ratio, W/ratio] logits are never built: the
        loss reads them at a few points per matched query (:class:`rfdetr.losses.mask_logits.SparseMaskLogits`).

        Args:
            spatial_features: [B, D, h, w] projector map.
            query_features: L tensors [B, N, D], decoder layer l paired with block l.
            image_size: (H, W) of the network input.

        Returns:
            L :class:`SparseMaskLogits` (see :meth:`factorised`), spatial features [B, D, H/ratio, W/ratio].
        """
        if len(query_features) > len(self.blocks):
            raise ValueError(f"got {len(query_features)} query sets for {len(self.blocks)} blocks")
        x = self.resize(spatial_features, image_size)
        out = []
        for block, queries in zip(self.blocks, query_features, strict=False):
            x = block(x)  # cumulative, as in forward()
            out.append(self.factorised(x, queries))
        return out

    def forward_encoder_sparse(
        self, spatial_features: torch.Tensor, query_features: torch.Tensor, image_size: tuple[int, int]
    ) -> SparseMaskLogits:
        """:meth:`forward_encoder`, factorised (training): blocks skipped, queries [B, N, D]."""
        return self.factorised(self.resize(spatial_features, image_size), query_features)
