"""COCO segmentation encodings: classify, decode to bool masks, and encode predictions as RLE.

One home for every mask conversion so that the dataset, the validator and the evaluator agree bit for bit: a mask
decoded here and re-encoded with :func:`encode_masks` is exactly pycocotools' own ``annToRLE`` of the annotation, which
is what makes "ground truth as predictions" score a mask AP of 1.0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

MASK_KINDS: tuple[str, ...] = ("polygon", "rle", "uncompressed_rle", "missing")


def mask_kind(segmentation: Any) -> str:
    """Which COCO encoding ``segmentation`` uses: polygon, rle, uncompressed_rle, missing, or invalid."""
    if segmentation is None or (isinstance(segmentation, (list, dict)) and len(segmentation) == 0):
        return "missing"
    if isinstance(segmentation, list):
        return "polygon"
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return "rle" if isinstance(segmentation["counts"], (str, bytes)) else "uncompressed_rle"
    return "invalid"


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode any COCO segmentation to a bool mask [height, width].

    Polygon parts are OR-ed together; compressed RLE is decoded directly; uncompressed RLE is compressed first.

    Raises:
        ValueError: malformed polygon or RLE, or an RLE whose size is not the image's.
    """
    kind = mask_kind(segmentation)
    if kind == "polygon":
        polygons = [p for p in segmentation if isinstance(p, list)]
        if len(polygons) != len(segmentation) or any(len(p) < 6 or len(p) % 2 for p in polygons):
            raise ValueError("each polygon must be a flat list of at least 3 x,y pairs")
        if not all(isinstance(v, (int, float)) for p in polygons for v in p):
            raise ValueError("polygon coordinates must be numbers")
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif kind in ("rle", "uncompressed_rle"):
        size = list(segmentation["size"])
        if size != [height, width]:
            raise ValueError(f"RLE size {size} is not the image size [{height}, {width}]")
        rle = mask_utils.frPyObjects(segmentation, height, width) if kind == "uncompressed_rle" else segmentation
        if kind == "uncompressed_rle" and sum(segmentation["counts"]) != height * width:
            raise ValueError(f"RLE run lengths sum to {sum(segmentation['counts'])}, not {height}x{width}")
        if isinstance(rle.get("counts"), str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    else:
        raise ValueError(f"segmentation is {kind}")
    return mask_utils.decode(rle).astype(bool)


def encode_masks(masks: torch.Tensor | np.ndarray) -> list[dict[str, Any]]:
    """Compressed COCO RLEs of binary masks [N, H, W] (or [N, 1, H, W]); ``counts`` are ASCII strings (JSON-safe)."""
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W] or [N, 1, H, W], got shape {masks.shape}")
    # pycocotools wants Fortran-ordered uint8 [H, W, N]. A bool array is reinterpreted as uint8 in place, and masks
    # stored as [N, W, H] (PostProcess's column_major_masks) are already in that order: no copy at all then.
    masks = masks.view(np.uint8) if masks.dtype == np.bool_ else masks.astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]
