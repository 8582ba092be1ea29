"""Small building blocks shared by several RF-DETR components.

Everything here is parameter-name compatible with the released rfdetr checkpoints: ``MLP`` keeps its linear layers in
``layers.{i}`` and ``LayerNorm2d`` owns plain ``weight``/``bias`` tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Stack of ``num_layers`` linear layers with ReLU in between (none after the last one).

    Used for the box heads (D -> D -> D -> 4) and the query positional head (2D -> D -> D).
    Parameters live in ``layers.{i}.{weight,bias}``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [in_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [..., in_dim]. Returns: [..., out_dim]."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (rfdetr's projector norm, eps 1e-6 there).

    Attributes ``weight``/``bias`` have shape [C], as in the checkpoints.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        # A Python int, not x.shape[-1]: a traced shape would make the ONNX export with a dynamic batch fail.
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, C, H, W]. Returns: [B, C, H, W] normalised over C at every pixel."""
        # F.layer_norm normalises trailing dims, so go through NHWC; the permutes are views and the result is
        # returned as an NCHW view, which every consumer here (convs, flatten) accepts.
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (self.num_channels,), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with the bias added in place after the matmul.

    ``F.linear`` lowers to ``addmm``, which first broadcasts the bias into the freshly allocated output and then
    accumulates the GEMM into it: an extra full write+read of the (large) output. A plain matmul followed by an
    in-place add is ~10% faster for the ViT/FFN shapes on CPU, autograd-safe, and numerically equivalent (~1 ulp).
    """
    out = torch.matmul(x, weight.t())
    return out if bias is None else out.add_(bias)


def apply_box_delta(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """rfdetr's "bbox reparam" box update, used by every box head.

    Args:
        delta: [..., 4] raw head output (dx, dy, dw, dh).
        reference: [..., 4] normalised cxcywh reference boxes (broadcastable to ``delta``).

    Returns:
        [..., 4] normalised cxcywh boxes ``(d_xy * ref_wh + ref_xy, exp(d_wh) * ref_wh)``; no sigmoid and no clamp,
        so values may leave [0, 1] exactly as upstream.
    """
    ref_xy, ref_wh = reference[..., :2], reference[..., 2:]
    return torch.cat([delta[..., :2] * ref_wh + ref_xy, delta[..., 2:].exp() * ref_wh], dim=-1)
