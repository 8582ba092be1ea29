"""What describes a stage-2 mask head, apart from its code: its kind, sizes and checkpoint key prefix.

In a module of its own so that every head (:mod:`rfdetr.models.mask_head`, :mod:`rfdetr.models.mask_head_dynamic`)
can carry a :class:`MaskHeadConfig` while :func:`rfdetr.models.mask_head.build_mask_head` imports every head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["KEY_PREFIXES", "MASK_HEAD_KINDS", "NANO_HEAD_SIZES", "NANO_WIDTH", "MaskHeadConfig", "MaskHeadKind",
           "resolve_mask_head_kind"]

MaskHeadKind = Literal["full", "nano", "dynamic"]
MASK_HEAD_KINDS: tuple[str, ...] = ("auto", "full", "nano", "dynamic")
# Model sizes for which ``--mask_head auto`` picks MaskHeadNano ("tiny" is the CPU test config, nano-like).
NANO_HEAD_SIZES: tuple[str, ...] = ("nano", "tiny")
NANO_WIDTH = 32
# Prefix of each head's tensors in checkpoints: MaskHead's are rfdetr's own segmentation head keys; MaskHeadDynamic
# shares nano's prefix (the recorded kind, not the prefix, says which head it is).
KEY_PREFIXES: dict[str, str] = {"full": "segmentation_head.", "nano": "mask_head.", "dynamic": "mask_head."}



@dataclass(frozen=True)
class MaskHeadConfig:
    """Everything needed to rebuild a mask head; stored as ``mask_head`` in stage-2 checkpoints.

    Attributes:
        kind: ``"full"`` (:class:`~rfdetr.models.mask_head.MaskHead`), ``"nano"``
            (:class:`~rfdetr.models.mask_head.MaskHeadNano`) or ``"dynamic"``
            (:class:`rfdetr.models.mask_head_dynamic.MaskHeadDynamic`).
        dim: D, the detector's hidden width (projector map and queries).
        num_layers: decoder layers L whose queries get masks.
        width: MaskHeadNano's interaction width C, MaskHeadDynamic's pixel-path width (MaskHead works at D).
        downsample_ratio: masks are at (H // ratio, W // ratio) of the network input.
    """

    kind: MaskHeadKind
    dim: int
    num_layers: int
    width: int = NANO_WIDTH
    downsample_ratio: int = 4

    def __post_init__(self) -> None:
        if self.kind not in MASK_HEAD_KINDS[1:]:
            raise ValueError(f"mask head kind must be one of {', '.join(MASK_HEAD_KINDS[1:])}, got {self.kind!r}")
        if min(self.dim, self.num_layers, self.width, self.downsample_ratio) < 1:
            raise ValueError(f"mask head sizes must be >= 1, got {self}")

    @property
    def key_prefix(self) -> str:
        """Prefix of the head's tensors in checkpoints."""
        # MaskHeadDynamic shares nano's prefix: the recorded kind, not the prefix, says which head it is.
        return KEY_PREFIXES[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key_prefix": self.key_prefix}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskHeadConfig:
        """Inverse of :meth:`to_dict` (unknown keys such as ``key_prefix`` are ignored)."""
        names = {"kind", "dim", "num_layers", "width", "downsample_ratio"}
        return cls(**{k: v for k, v in data.items() if k in names})



def resolve_mask_head_kind(kind: str, size: str) -> MaskHeadKind:
    """``--mask_head``: ``auto`` is MaskHeadNano for nano (and the nano-like ``tiny``), MaskHead otherwise;
    ``dynamic`` is :class:`rfdetr.models.mask_head_dynamic.MaskHeadDynamic`."""
    if kind == "auto":
        return "nano" if size in NANO_HEAD_SIZES else "full"
    if kind not in MASK_HEAD_KINDS[1:]:
        raise ValueError(f"--mask_head must be one of {', '.join(MASK_HEAD_KINDS)}, got {kind!r}")
    return kind  # type: ignore[return-value]
