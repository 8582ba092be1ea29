"""Export a model to any registered format: :func:`export_model`, behind :meth:`rfdetr.detr.RFDETR.export`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from rfdetr.deploy.formats import get_format, load_format
from rfdetr.deploy.graph import prepare_export

__all__ = ["default_file_name", "export_model"]

logger = logging.getLogger(__name__)


def default_file_name(format: str, half: bool = False) -> str:
    """``inference_model.onnx``, ``inference_model_fp16.tflite`` ...: the file name when none is given."""
    fmt = get_format(format)
    return f"inference_model{'_fp16' if half else ''}{fmt.suffix}"


def export_model(
    model: nn.Module,
    output_dir: str | os.PathLike[str],
    format: str,
    resolution: int,
    metadata: Mapping[str, str],
    *,
    batch_size: int = 1,
    half: bool = False,
    with_masks: bool = True,
    file_name: str | None = None,
    **options: Any,
) -> Path:
    """Write ``model``'s inference graph as a ``format`` file in ``output_dir``.

    Args:
        model: an :class:`~rfdetr.models.detector.RFDETRModel` or a stage-2 :class:`~rfdetr.models.segmenter.Segmenter`
            (deep-copied, never modified).
        output_dir: folder of the file (created).
        format: a name of :data:`rfdetr.deploy.formats.FORMATS`.
        resolution: square input side R.
        metadata: :func:`rfdetr.deploy.metadata.export_metadata` entries.
        batch_size: static batch size of the file.
        half: float16 weights (where the format offers them).
        with_masks: keep the mask output when the model has one.
        file_name: name of the file (default: :func:`default_file_name`).
        **options: the format's own options (ONNX: ``opset``, ``dynamic_batch``, ``simplify``).

    Returns:
        The written file.

    Raises:
        ValueError: unknown format, bad option, batch size or resolution.
        ImportError: the format's packages are missing (the message gives the pip command).
    """
    fmt = get_format(format)
    fmt.require()
    name = file_name or default_file_name(format, half)
    if not name.endswith(fmt.suffix):
        raise ValueError(f"file name {name!r} does not end with {fmt.suffix}, the suffix of {format} files")
    module, example = prepare_export(model, resolution, batch_size, with_masks)
    entries = {**metadata, "format": format, "precision": "float16" if half else "float32"}
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return load_format(fmt).export(module, path, example, entries, half=half, **options)
