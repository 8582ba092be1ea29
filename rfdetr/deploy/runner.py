"""Run an exported ONNX file with onnxruntime and get the same :class:`~rfdetr.deploy.detections.Detections` as
predict().

    from rfdetr.deploy.runner import OnnxModel
    model = OnnxModel("output/inference_model.onnx")
    detections = model.predict("image.jpg", threshold=0.5)

Pre-processing (resize, normalisation) and post-processing (top-``num_select`` over queries x classes, boxes and masks
at the original size, ``score > threshold``) are predict()'s own functions (:mod:`rfdetr.deploy.processing`); only the
network runs in onnxruntime. Resolution, mean / std, class names and ``num_select`` come from the file's metadata
(:mod:`rfdetr.deploy.formats.onnx`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD
from rfdetr.deploy.detections import Detections
from rfdetr.deploy.formats.onnx import INPUT_NAME, INSTALL_HINT, decode_metadata
from rfdetr.deploy.processing import (
    ImageInput,
    export_outputs_to_dict,
    load_images,
    preprocess,
    run_in_fixed_batches,
    to_detections,
)
from rfdetr.models.postprocess import PostProcess

__all__ = ["OnnxModel"]


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"running ONNX files needs the optional package onnxruntime: {INSTALL_HINT}") from err
    return onnxruntime


class OnnxModel:
    """An exported model in an onnxruntime session, with :meth:`predict` like :meth:`rfdetr.detr.RFDETR.predict`.

    Args:
        path: an ``.onnx`` file written by :meth:`rfdetr.detr.RFDETR.export` (or ``python -m rfdetr.export``).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        providers: onnxruntime execution providers (default: CPU).

    Attributes:
        class_names: names indexed by class id (from the metadata; ``class_{i}`` when absent).
        resolution: the square input side R.
        masks: whether the file has a ``masks`` output.
        batch_size: the file's static batch size, or ``None`` for a dynamic batch.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImportError: onnxruntime is not installed.
        ValueError: the file is not an RF-DETR export (no ``input`` [B, 3, R, R] input).
    """

    def __init__(
        self, path: str | os.PathLike[str], threads: int | None = None, providers: Sequence[str] | None = None
    ) -> None:
        ort = _require_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), options, providers=list(providers or ["CPUExecutionProvider"])
        )
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(inputs[0].shape) != 4:
            found = [(i.name, i.shape) for i in inputs]
            raise ValueError(
                f"{self.path} is not an RF-DETR export: expected one input {INPUT_NAME!r} [B, 3, R, R], found {found}"
            )
        batch, _, height, width = inputs[0].shape
        self.batch_size: int | None = batch if isinstance(batch, int) else None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.masks = "masks" in self.output_names
        meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.metadata = meta
        self.resolution = int(meta.get("resolution", height))
        if (height, width) != (self.resolution, self.resolution):
            raise ValueError(
                f"{self.path}: input is {height}x{width} but the metadata says resolution {self.resolution}"
            )
        self.mean: tuple[float, ...] = tuple(meta.get("mean", IMAGENET_MEAN))
        self.std: tuple[float, ...] = tuple(meta.get("std", IMAGENET_STD))
        num_logits = self.session.get_outputs()[1].shape[-1]
        names = meta.get("class_names")
        self.class_names: list[str] = (
            list(names) if isinstance(names, list) else [f"class_{i}" for i in range(int(num_logits))]
        )
        num_queries = self.session.get_outputs()[0].shape[1]
        self.postprocess = PostProcess(num_select=int(meta.get("num_select", num_queries)))

    def run(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network on preprocessed pixels.

        Args:
            pixels: [N, 3, R, R] normalised float32 (any N: a static-batch file runs in padded chunks).

        Returns:
            ``pred_boxes`` [N, Q, 4], ``pred_logits`` [N, Q, K] and, with masks, ``pred_masks`` [N, Q, R/4, R/4].
        """

        def session_run(chunk: torch.Tensor) -> list[torch.Tensor]:
            feed = {INPUT_NAME: np.ascontiguousarray(chunk.cpu().numpy(), dtype=np.float32)}
            return [torch.from_numpy(out) for out in self.session.run(self.output_names, feed)]

        step = self.batch_size if self.batch_size is not None else max(1, len(pixels))
        return export_outputs_to_dict(run_in_fixed_batches(session_run, pixels, step))

    def predict(
        self, images: ImageInput | Sequence[ImageInput], threshold: float = 0.5
    ) -> Detections | list[Detections]:
        """Detect (and segment) objects; the same inputs and results as :meth:`rfdetr.detr.RFDETR.predict`.

        Args:
            images: one image or a list (paths, PIL images, RGB numpy arrays, [3, H, W] tensors in [0, 1]).
            threshold: keep detections with score > threshold.

        Returns:
            A :class:`Detections` per image (boxes and masks in original pixels); a list for list/batch input.
        """
        tensors, batched = load_images(images)
        if len(tensors) == 0:
            return []
        sizes = torch.tensor([t.shape[-2:] for t in tensors])  # [N, 2] (H, W)
        pixels = torch.cat([preprocess(t, self.resolution, "cpu", self.mean, self.std) for t in tensors])
        outputs = self.run(pixels)
        with torch.inference_mode():
            results = self.postprocess(outputs, sizes, score_threshold=threshold)
        detections = [to_detections(r, threshold, self.class_names) for r in results]
        return detections if batched else detections[0]

    def __repr__(self) -> str:
        batch = "dynamic" if self.batch_size is None else self.batch_size
        return (
            f"OnnxModel({str(self.path)!r}, resolution={self.resolution}, classes={len(self.class_names)}, "
            f"masks={self.masks}, batch={batch})"
        )
