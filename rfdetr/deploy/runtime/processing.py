"""Pre- and post-processing shared by :meth:`rfdetr.detr.RFDETR.predict` and
:class:`rfdetr.deploy.runtime.runner.OnnxModel`.

Images (paths, PIL, numpy, tensors) -> float [3, H, W] in [0, 1] -> bilinear resize to R x R without antialias and
ImageNet normalisation (rfdetr 1.11.2) -> network -> :class:`rfdetr.models.postprocess.PostProcess` ->
:class:`rfdetr.deploy.runtime.detections.Detections`. Keeping one copy is what makes an exported model's detections
equal predict()'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD
from rfdetr.deploy.runtime.detections import Detections

__all__ = [
    "ImageInput",
    "class_name",
    "export_outputs_to_dict",
    "load_images",
    "preprocess",
    "run_in_fixed_batches",
    "to_detections",
]

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def load_images(images: ImageInput | Sequence[ImageInput]) -> tuple[list[torch.Tensor], bool]:
    """Inputs of :meth:`RFDETR.predict` -> (float32 [3, H, W] tensors in [0, 1], whether the input was a batch)."""
    batched = isinstance(images, (list, tuple)) or (isinstance(images, torch.Tensor) and images.ndim == 4)
    items: Sequence[ImageInput] = list(images) if batched else [images]  # type: ignore[arg-type]
    return [_to_chw01(image, i if batched else None) for i, image in enumerate(items)], batched


def preprocess(
    image: torch.Tensor,
    resolution: int,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """[3, H, W] in [0, 1] -> [1, 3, R, R] normalised (1.11.2: bilinear resize without antialias, then normalise)."""
    size = (resolution, resolution)
    x = F.interpolate(image[None].to(device), size=size, mode="bilinear", align_corners=False, antialias=False)
    mean_t = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def run_in_fixed_batches(
    run: Callable[[torch.Tensor], Sequence[torch.Tensor]], pixels: torch.Tensor, batch_size: int
) -> list[torch.Tensor]:
    """Run a fixed-batch graph (traced or ONNX) over any number of images.

    Full chunks of ``batch_size`` images go through ``run``; the last one is padded with its final image and the
    padding's outputs are dropped.

    Args:
        run: [batch_size, 3, R, R] -> tensors with the batch first (boxes, logits[, masks]).
        pixels: [N, 3, R, R].
        batch_size: the graph's batch size.

    Returns:
        ``run``'s outputs for all N images, concatenated and cast to float32.
    """
    chunks: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = torch.cat([chunk, chunk[-1:].expand(pad, -1, -1, -1)])
        chunks.append(tuple(t[: batch_size - pad].float() for t in run(chunk)))
    return [torch.cat(parts) for parts in zip(*chunks, strict=True)]


def export_outputs_to_dict(outputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """(boxes, logits[, masks]) of the export graph -> the post-processor's ``pred_*`` dict."""
    out = {"pred_boxes": outputs[0], "pred_logits": outputs[1]}
    if len(outputs) > 2:
        out["pred_masks"] = outputs[2]
    return out


def to_detections(result: dict[str, torch.Tensor], threshold: float, class_names: Sequence[str]) -> Detections:
    """One image's :class:`PostProcess` result -> :class:`Detections` with ``score > threshold``."""
    keep = result["scores"] > threshold
    labels = result["labels"][keep].cpu().numpy()
    mask = None
    if "masks" in result:
        mask = result["masks"][keep][:, 0].cpu().numpy()  # [n, 1, H, W] -> [n, H, W]
    return Detections(
        xyxy=result["boxes"][keep].float().cpu().numpy(),
        confidence=result["scores"][keep].float().cpu().numpy(),
        class_id=labels,
        class_name=[class_name(class_names, int(i)) for i in labels],
        mask=mask,
    )


def class_name(class_names: Sequence[str], class_id: int) -> str:
    """``class_names[class_id]``, or ``class_{id}`` outside the list."""
    return class_names[class_id] if 0 <= class_id < len(class_names) else f"class_{class_id}"


def _to_chw01(image: ImageInput, index: int | None) -> torch.Tensor:
    """Any supported image -> float32 tensor [3, H, W] in [0, 1] (on its original device)."""
    where = "image" if index is None else f"image {index}"
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(Path(image)) as pil:
                image = pil.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"{where}: cannot read image file {os.fspath(image)!r}: {err}") from None
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{where}: expected an RGB numpy array [H, W, 3], got shape {image.shape}")
        if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"{where}: numpy images must be uint8 or float in [0, 1], got dtype {image.dtype}")
        # PIL hands out read-only arrays, which torch.from_numpy warns about; copy those.
        image = torch.from_numpy(np.ascontiguousarray(image) if image.flags.writeable else image.copy())
        image = image.permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"{where}: expected a tensor [3, H, W], got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        if not image.is_floating_point():
            raise ValueError(f"{where}: tensors must be float in [0, 1] (or uint8), got dtype {image.dtype}")
        if image.numel() and (image.min() < 0 or image.max() > 1):
            raise ValueError(
                f"{where}: float pixel values must be in [0, 1], got range "
                f"[{float(image.min()):.3g}, {float(image.max()):.3g}]; divide uint8 data by 255"
            )
        return image.float()
    raise ValueError(
        f"{where}: unsupported type {type(image).__name__}; pass a path, PIL image, numpy array or torch tensor"
    )
