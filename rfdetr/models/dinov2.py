"""Windowed DINOv2 ViT encoder (rfdetr's ``dinov2_windowed_{small,base}``), spec section 3.

Parameter names follow Hugging Face ``Dinov2WithRegisters`` so that the released checkpoints load unchanged:
``embeddings.*``, ``encoder.layer.{i}.*``, ``layernorm.*``. The :class:`DinoV2` wrapper only exists so the keys read
``backbone.0.encoder.encoder.*`` like upstream.

Windowing: the patch grid of every image is cut into ``num_windows x num_windows`` windows, each with its own copy of
the CLS token, and most blocks attend inside a window only. "Global" blocks concatenate the windows of one image
(CLS copies included) for the attention step only; LayerNorm and MLP are per token so they never need it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.models.layers import linear


class PatchEmbeddings(nn.Module):
    """Non-overlapping patch projection: Conv2d(3 -> C, kernel = stride = patch)."""

    def __init__(self, patch_size: int, width: int, in_channels: int = 3) -> None:
        super().__init__()
        self.projection = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, 3, H, W]. Returns: [B, C, H/p, W/p]."""
        return self.projection(x)


class Embeddings(nn.Module):
    """CLS token + patch tokens + (runtime-interpolated) absolute position embedding.

    ``position_embeddings`` is [1, pe*pe + 1, C] (CLS position first). ``mask_token`` is only kept for checkpoint
    compatibility; inference never uses it.
    """

    def __init__(self, patch_size: int, width: int, pos_grid: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.mask_token = nn.Parameter(torch.zeros(1, width))
        self.position_embeddings = nn.Parameter(torch.zeros(1, pos_grid * pos_grid + 1, width))
        self.patch_embeddings = PatchEmbeddings(patch_size, width)
        self.pos_grid = pos_grid

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int, square_input: bool) -> torch.Tensor:
        """Position embedding for a ``grid_h x grid_w`` patch grid.

        Returns:
            [1, 1 + grid_h * grid_w, C] in the parameter's dtype.
        """
        pos = self.position_embeddings
        # Upstream (HF) skips the resize only when the token count matches AND the pixel input is square, so a
        # non-square input with N == pe^2 is still resized (to the same grid); keep that exact rule.
        if grid_h * grid_w == self.pos_grid**2 and square_input:
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        dim = pos.shape[-1]
        patch_pos = patch_pos.reshape(1, self.pos_grid, self.pos_grid, dim).permute(0, 3, 1, 2)
        # Trap (spec 3.3): bicubic WITH antialias, computed in float32. antialias=True switches PyTorch to the
        # a=-0.5 kernel even when upsampling (37 -> 40), so dropping it changes the values by up to ~0.4.
        patch_pos = F.interpolate(
            patch_pos.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False, antialias=True
        ).to(pos.dtype)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Args: pixels [B, 3, H, W]. Returns: tokens [B, 1 + Hp*Wp, C] (CLS first, patches row-major)."""
        batch, _, height, width = pixels.shape
        patches = self.patch_embeddings(pixels)  # [B, C, Hp, Wp]
        grid_h, grid_w = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2)  # [B, Hp*Wp, C]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1).to(patches.dtype), patches], dim=1)
        return tokens + self.interpolate_pos_encoding(grid_h, grid_w, height == width).to(tokens.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (HF names ``query``/``key``/``value``)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, T, C]. Returns: [B, T, C] (heads concatenated, before the output projection)."""
        batch, tokens, width = x.shape
        # One GEMM for q, k and v instead of three: the concatenated weight is tiny next to the activations.
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        qkv = linear(x, weight, bias).view(batch, tokens, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, nH, T, hd]
        out = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(hd), as upstream
        return out.transpose(1, 2).reshape(batch, tokens, width)


class SelfOutput(nn.Module):
    """Attention output projection (HF name ``attention.output.dense``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.dense.weight, self.dense.bias)


class Attention(nn.Module):
    """``attention.attention`` (q/k/v) followed by ``attention.output`` (dense)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.attention = SelfAttention(width, num_heads)
        self.output = SelfOutput(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, T, C]. Returns: [B, T, C]."""
        return self.output(self.attention(x))


class LayerScale(nn.Module):
    """Per-channel residual scale ``lambda1`` [C]."""

    def __init__(self, width: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((width,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class Mlp(nn.Module):
    """ViT MLP: fc1 (C -> 4C), exact GELU, fc2 (4C -> C)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [..., C]. Returns: [..., C]."""
        hidden = linear(x, self.fc1.weight, self.fc1.bias)
        if hidden.requires_grad:
            hidden = F.gelu(hidden)
        else:
            # No autograd graph: GELU in place (F.gelu has no inplace flag), saving a second 4C-wide buffer and
            # its memory traffic. With autograd the input is needed for the backward pass, hence the branch.
            hidden = torch.ops.aten.gelu_(hidden)
        return linear(hidden, self.fc2.weight, self.fc2.bias)


class Block(nn.Module):
    """Pre-LN ViT block; ``global_attention`` merges the windows of each image for the attention step."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int, global_attention: bool, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attention = Attention(width, num_heads)
        self.layer_scale1 = LayerScale(width)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, width * mlp_ratio)
        self.layer_scale2 = LayerScale(width)
        self.global_attention = global_attention

    def forward(self, x: torch.Tensor, windows_per_image: int, workspace: Workspace | None = None) -> torch.Tensor:
        """Args: x [B * nw^2, T, C] windowed tokens; ``workspace``: buffers for the no-autograd CPU path.
        Returns: same shape.

        Without an autograd graph the residual stream ``x`` is updated in place (one buffer for all blocks).
        """
        if workspace is not None:
            return self._forward_into(x, windows_per_image, workspace)
        h = self.norm1(x)
        if self.global_attention and windows_per_image > 1:
            # Windows of one image are consecutive in the batch, so a reshape concatenates them in window order
            # (all nw^2 CLS copies included), exactly like upstream's global blocks.
            num_win, tokens, width = h.shape
            h = h.reshape(num_win // windows_per_image, windows_per_image * tokens, width)
            h = self.attention(h).reshape(num_win, tokens, width)
        else:
            h = self.attention(h)
        x = _scaled_residual(x, h, self.layer_scale1.lambda1)
        return _scaled_residual(x, self.mlp(self.norm2(x)), self.layer_scale2.lambda1)

    def _forward_into(self, x: torch.Tensor, windows_per_image: int, ws: Workspace) -> torch.Tensor:
        """The same block with every large intermediate written into ``ws`` and ``x`` updated in place.

        Upstream's kernels here: ``addmm`` with the bias and separate q/k/v products, which on CPU beat the fused
        product of :meth:`forward` once nothing is allocated (outputs agree to float rounding, ~1e-6).
        """
        num_win, tokens, width = x.shape
        flat = x.view(-1, width)
        attn = self.attention.attention
        h = self.norm1(x).view(-1, width)  # (native_layer_norm.out would allocate anyway, then copy)
        groups = num_win // windows_per_image if self.global_attention and windows_per_image > 1 else num_win
        shape = (groups, -1, attn.num_heads, width // attn.num_heads)
        q, k, v = (
            torch.addmm(lin.bias, h, lin.weight.t(), out=buf).view(shape).transpose(1, 2)
            for lin, buf in zip((attn.query, attn.key, attn.value), ws.qkv, strict=True)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, width)
        dense = self.attention.output.dense
        flat.addcmul_(torch.addmm(dense.bias, out, dense.weight.t(), out=ws.proj), self.layer_scale1.lambda1)
        h = self.norm2(x).view(-1, width)
        hidden = torch.addmm(self.mlp.fc1.bias, h, self.mlp.fc1.weight.t(), out=ws.hidden)
        torch.ops.aten.gelu_(hidden)
        fc2 = self.mlp.fc2
        flat.addcmul_(torch.addmm(fc2.bias, hidden, fc2.weight.t(), out=ws.proj), self.layer_scale2.lambda1)
        return x


class Workspace:
    """Reusable buffers for :meth:`Block._forward_into` (inference on the CPU).

    PyTorch's CPU allocator hands every large intermediate back to the C library, which returns the top of the heap
    to the OS; the next forward faults all of it in again, page by page (thousands of page faults per forward, 10-20%
    of a nano forward on a 2-core machine). Keeping the per-block buffers alive between forwards avoids that. One
    workspace per thread (forwards in one thread never overlap), for the last token layout only.
    """

    _local = threading.local()

    def __init__(self, tokens: int, width: int, hidden: int, like: torch.Tensor) -> None:
        self.key = self.make_key(tokens, width, hidden, like)
        self.qkv = [like.new_empty(tokens, width) for _ in range(3)]
        self.proj = like.new_empty(tokens, width)
        self.hidden = like.new_empty(tokens, hidden)

    @staticmethod
    def make_key(tokens: int, width: int, hidden: int, like: torch.Tensor) -> tuple:
        # Inference-mode tensors cannot be written outside inference mode, so the mode is part of the key.
        return tokens, width, hidden, like.dtype, like.device, torch.is_inference_mode_enabled()

    @classmethod
    def get(cls, tokens: int, width: int, hidden: int, like: torch.Tensor) -> Workspace:
        """This thread's workspace for ``tokens`` x ``width`` rows (replaced when the layout changes)."""
        current = getattr(cls._local, "workspace", None)
        if current is None or current.key != cls.make_key(tokens, width, hidden, like):
            cls._local.workspace = None  # free the old buffers before allocating the new ones
            current = cls._local.workspace = cls(tokens, width, hidden, like)
        return current


def _scaled_residual(x: torch.Tensor, update: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x + scale * update`` in one pass; in place on the residual stream when no autograd graph needs ``x``."""
    # Grad mode, not ``requires_grad``: an eval model's parameters still require grad under no_grad/inference_mode.
    if torch.is_grad_enabled() and (x.requires_grad or update.requires_grad or scale.requires_grad):
        return torch.addcmul(x, update, scale)
    return x.addcmul_(update, scale)


class LayerStack(nn.Module):
    """Holds the blocks as ``layer.{i}`` (HF naming)."""

    def __init__(self, blocks: Sequence[Block]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(blocks)


class WindowedDinov2(nn.Module):
    """Windowed DINOv2 ViT returning the final-LayerNormed patch maps at the requested stages.

    Args:
        width / depth / num_heads: ViT size (small: 384/12/6, base: 768/12/12).
        patch_size: patch side in pixels.
        pos_grid: side of the stored position-embedding grid (``positional_encoding_size``).
        num_windows: windows per image side (1 disables windowing).
        out_feature_indexes: 1-based stages to tap (stage k = output of 0-based block k-1).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        pos_grid: int,
        num_windows: int,
        out_feature_indexes: Sequence[int],
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_windows = num_windows
        self.out_feature_indexes = tuple(out_feature_indexes)
        global_blocks = compute_global_block_indexes(self.out_feature_indexes, depth)
        self.embeddings = Embeddings(patch_size, width, pos_grid)
        self.encoder = LayerStack(
            [Block(width, num_heads, mlp_ratio, global_attention=i in global_blocks) for i in range(depth)]
        )
        self.layernorm = nn.LayerNorm(width, eps=1e-6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DINOv2 init (only matters when training from scratch; checkpoints overwrite it)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.embeddings.position_embeddings, std=0.02)
        nn.init.trunc_normal_(self.embeddings.cls_token, std=0.02)

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Args: pixels [B, 3, H, W], H and W multiples of patch * num_windows.

        Returns:
            One map [B, C, H/patch, W/patch] per entry of ``out_feature_indexes``.
        """
        divisor = self.patch_size * self.num_windows
        height, width = pixels.shape[-2:]
        if height % divisor or width % divisor:
            raise ValueError(f"input {height}x{width} must be a multiple of patch_size*num_windows = {divisor}")
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        x = self._window(self.embeddings(pixels), grid_h, grid_w)
        windows_per_image = self.num_windows**2
        taps = set(self.out_feature_indexes)
        workspace = None
        if self._use_workspace(x):
            mlp = self.encoder.layer[0].mlp.fc1
            workspace = Workspace.get(x.shape[0] * x.shape[1], x.shape[2], mlp.out_features, x)
        features = []
        for index, block in enumerate(self.encoder.layer):
            x = block(x, windows_per_image, workspace)
            if index + 1 in taps:
                features.append(self._unwindow(self.layernorm(x)[:, 1:], grid_h, grid_w))
        return features

    def _use_workspace(self, x: torch.Tensor) -> bool:
        """Eager float32 CPU inference only (eval mode, no autograd): autograd needs the intermediates, autocast
        changes the dtypes, and a traced or compiled graph must not capture per-thread buffers (nor could ONNX
        express ``out=``). Train mode keeps the training kernels even under ``no_grad``."""
        return (
            not self.training
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
        )

    def _window(self, tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """[B, 1 + Hp*Wp, C] -> [B * nw^2, 1 + Hp*Wp/nw^2, C]; window index b*nw^2 + row*nw + col."""
        nw = self.num_windows
        if nw == 1:
            return tokens
        batch, _, dim = tokens.shape
        cls, patches = tokens[:, :1], tokens[:, 1:]
        patches = patches.reshape(batch, nw, grid_h // nw, nw, grid_w // nw, dim).permute(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(batch * nw * nw, (grid_h // nw) * (grid_w // nw), dim)
        # One CLS copy per window (all identical here, so per-image vs interleaved repetition does not matter).
        cls = cls.repeat_interleave(nw * nw, dim=0)
        return torch.cat([cls, patches], dim=1)

    def _unwindow(self, patches: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """[B * nw^2, Hp*Wp/nw^2, C] patch tokens (CLS removed) -> [B, C, Hp, Wp]."""
        nw = self.num_windows
        dim = patches.shape[-1]
        patches = patches.reshape(-1, nw, nw, grid_h // nw, grid_w // nw, dim).permute(0, 1, 3, 2, 4, 5)
        return patches.reshape(-1, grid_h, grid_w, dim).permute(0, 3, 1, 2)


class DinoV2(nn.Module):
    """Holder whose ``encoder`` attribute is the ViT, reproducing upstream's ``backbone.0.encoder.encoder`` keys."""

    def __init__(self, encoder: WindowedDinov2) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Args: pixels [B, 3, H, W]. Returns: list of [B, C, H/patch, W/patch] tapped maps."""
        return self.encoder(pixels)


def compute_global_block_indexes(out_feature_indexes: Sequence[int], depth: int) -> set[int]:
    """0-based blocks that use global attention (spec 3.4, trap 15.2).

    Upstream declares blocks ``{0..ofi[-1]} - ofi`` windowed, using the 1-based tap numbers as 0-based block
    indices; every other block is global. E.g. ofi (3,6,9,12) -> global {3,6,9}; (2,5,8,11) -> {2,5,8,11}.
    """
    windowed = set(range(out_feature_indexes[-1] + 1)) - set(out_feature_indexes)
    return {i for i in range(depth) if i not in windowed}


def build_dinov2(
    width: int,
    depth: int,
    num_heads: int,
    patch_size: int,
    pos_grid: int,
    num_windows: int,
    out_feature_indexes: Sequence[int],
) -> DinoV2:
    """Build the windowed ViT wrapped in :class:`DinoV2` (keys ``encoder.{embeddings,encoder,layernorm}.*``)."""
    vit = WindowedDinov2(width, depth, num_heads, patch_size, pos_grid, num_windows, out_feature_indexes)
    return DinoV2(vit)
