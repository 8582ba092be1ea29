"""Multi-scale projector (spec section 4): ViT taps -> D-channel maps, one per ``projector_scale`` level.

Keys live under ``backbone.0.projector.`` as ``stages_sampling.{i}.{j}.*`` (resampling of tap j for level i) and
``stages.{i}.0`` (C2f) / ``stages.{i}.1`` (channel LayerNorm). The norm inside every conv unit is called ``bn`` in
the checkpoints even though it is a LayerNorm (rfdetr builds with ``layer_norm=True``), hence the odd attribute name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rfdetr.models.layers import LayerNorm2d, linear

# Level name -> resampling factor relative to the ViT patch grid.
LEVEL_SCALES: dict[str, float] = {"P3": 2.0, "P4": 1.0, "P5": 0.5}


class ConvX(nn.Module):
    """Conv2d (no bias, "same" padding) -> channel LayerNorm (eps 1e-6) -> activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = LayerNorm2d(out_ch, eps=1e-6)
        self.act = act if act is not None else nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, in_ch, H, W]. Returns: [B, out_ch, H/stride, W/stride]."""
        if self.conv.kernel_size == (1, 1) and self.conv.stride == (1, 1):
            # A 1x1 conv is a matmul over channels. Doing it on the NHWC view (the ViT taps and every LayerNorm2d
            # output are channels-last in memory) avoids PyTorch's slow non-contiguous conv path and all copies.
            x = linear(x.permute(0, 2, 3, 1), self.conv.weight.flatten(1)).permute(0, 3, 1, 2)
        else:
            x = self.conv(x)
        return self.act(self.bn(x))


class Bottleneck(nn.Module):
    """Two 3x3 ConvX; no residual because C2f builds its bottlenecks with ``shortcut=False``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cv1 = ConvX(channels, channels, 3)
        self.cv2 = ConvX(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8-style C2f: 1x1 to 2c, split, chain ``n`` bottlenecks on the second half, concat all, 1x1 to out."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int = 3, expansion: float = 0.5) -> None:
        super().__init__()
        self.hidden = int(out_ch * expansion)
        self.cv1 = ConvX(in_ch, 2 * self.hidden, 1)
        self.cv2 = ConvX((2 + num_blocks) * self.hidden, out_ch, 1)
        self.m = nn.ModuleList(Bottleneck(self.hidden) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x [B, in_ch, H, W]. Returns: [B, out_ch, H, W]."""
        parts = list(self.cv1(x).split(self.hidden, dim=1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


def _sampler(scale: float, channels: int) -> nn.Sequential:
    """Resampling of one tap for a level; identity (empty, no keys) at scale 1."""
    if scale == 1.0:
        return nn.Sequential()
    if scale == 2.0:
        return nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
    if scale == 0.5:
        # Upstream uses ReLU (not SiLU) in this downsampling unit.
        return nn.Sequential(ConvX(channels, channels, 3, stride=2, act=nn.ReLU()))
    raise ValueError(f"unsupported projector scale {scale}")


class MultiScaleProjector(nn.Module):
    """Fuse the ViT taps into one D-channel map per level.

    Args:
        in_channels: ViT width C (every tap has C channels).
        num_taps: number of tapped ViT stages (4).
        out_channels: D.
        levels: level names in output order, e.g. ``("P4",)``.
    """

    def __init__(self, in_channels: int, num_taps: int, out_channels: int, levels: Sequence[str]) -> None:
        super().__init__()
        scales = [LEVEL_SCALES[name] for name in levels]
        self.stages_sampling = nn.ModuleList(
            nn.ModuleList(_sampler(s, in_channels) for _ in range(num_taps)) for s in scales
        )
        fused = [num_taps * (in_channels // 2 if s == 2.0 else in_channels) for s in scales]
        self.stages = nn.ModuleList(
            nn.Sequential(C2f(c, out_channels), LayerNorm2d(out_channels, eps=1e-6)) for c in fused
        )

    def forward(self, taps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Args: taps, each [B, C, Hp, Wp]. Returns: per level [B, D, Hp*s, Wp*s]."""
        outputs = []
        for samplers, stage in zip(self.stages_sampling, self.stages, strict=True):
            outputs.append(stage(torch.cat([sample(t) for sample, t in zip(samplers, taps, strict=True)], dim=1)))
        return outputs
