"""Run any exported file in its own runtime and get the same :class:`~rfdetr.deploy.runtime.detections.Detections` as
``predict()``.

    from rfdetr.deploy import load
    model = load("output/inference_model.tflite")      # or .onnx, .xml (OpenVINO), .pte (ExecuTorch)
    detections = model.predict("image.jpg", threshold=0.5)

Pre-processing (resize, normalisation) and post-processing (top-``num_select`` over queries x classes, boxes and masks
at the original size, ``score > threshold``) are predict()'s own functions (:mod:`rfdetr.deploy.runtime.processing`);
only the network runs in the format's runtime (its ``Session``, :mod:`rfdetr.deploy.export.formats`). Resolution, mean /
std, class names and ``num_select`` come from the file's metadata.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD
from rfdetr.deploy.export.formats import ExportFormat, format_for_file, get_format, load_format
from rfdetr.deploy.export.metadata import decode_metadata
from rfdetr.deploy.runtime.detections import Detections
from rfdetr.deploy.runtime.processing import (
    ImageInput,
    export_outputs_to_dict,
    load_images,
    preprocess,
    run_in_fixed_batches,
    to_detections,
)
from rfdetr.deploy.runtime.timing import StageTimer, timed
from rfdetr.models.postprocess import PostProcess

__all__ = ["ExportedModel", "OnnxModel", "load"]


class ExportedModel:
    """An exported file in its runtime, with :meth:`predict` like :meth:`rfdetr.detr.RFDETR.predict`.

    Args:
        path: a file written by :meth:`rfdetr.detr.RFDETR.export` (or ``python -m rfdetr.export``).
        threads: the runtime's intra-op threads (default: the runtime's choice).
        format: the format's name; default: from the file's suffix.
        **session_options: passed to the format's ``Session`` (e.g. ``providers`` for onnxruntime).

    Attributes:
        format: the :class:`~rfdetr.deploy.export.formats.ExportFormat`.
        class_names: names indexed by class id (from the metadata; ``class_{i}`` when absent).
        resolution: the square input side R.
        masks: whether the file has a mask output.
        batch_size: the file's static batch size, or ``None`` for a dynamic batch.
        metadata: the decoded metadata.
        category_ids: the training dataset's category id of each class, or ``None`` when the file does not say.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImportError: the format's runtime is not installed (the message gives the pip command).
        ValueError: an unknown suffix, or a file its runtime cannot read or that is not an RF-DETR export.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, format: str | None = None,
                 **session_options: Any) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"exported model not found: {self.path}")
        self.format: ExportFormat = get_format(format) if format is not None else format_for_file(self.path)
        self.format.require(for_running=True)
        self.session = load_format(self.format).Session(self.path, threads, **session_options)
        batch, channels, height, width = self.session.input_shape
        if channels != 3 or height != width:
            raise ValueError(f"{self.path} is not an RF-DETR export: input {self.session.input_shape}, expected "
                             "[B, 3, R, R]")
        self.batch_size: int | None = batch
        meta = decode_metadata(self.session.metadata)
        self.metadata = meta
        self.resolution = int(meta.get("resolution", height))
        if (height, width) != (self.resolution, self.resolution):
            raise ValueError(f"{self.path}: input is {height}x{width} but the metadata says resolution "
                             f"{self.resolution}")
        self.mean: tuple[float, ...] = tuple(meta.get("mean", IMAGENET_MEAN))
        self.std: tuple[float, ...] = tuple(meta.get("std", IMAGENET_STD))
        self.masks = len(self.session.output_names) > 2
        names = meta.get("class_names")
        num_logits = meta.get("num_logits")
        if isinstance(names, list):
            self.class_names: list[str] = [str(n) for n in names]
        else:
            self.class_names = [f"class_{i}" for i in range(int(num_logits or 0))]
        ids = meta.get("category_ids")
        # The training dataset's category id of each class, when the exporting model knew them (see RFDETR).
        self.category_ids: list[int] | None = [int(i) for i in ids] if isinstance(ids, list) and ids else None
        self.postprocess = PostProcess(num_select=int(meta.get("num_select", 300)))

    def run(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network on preprocessed pixels.

        Args:
            pixels: [N, 3, R, R] normalised float32 (any N: a static-batch file runs in padded chunks).

        Returns:
            ``pred_boxes`` [N, Q, 4], ``pred_logits`` [N, Q, K] and, with masks, ``pred_masks`` [N, Q, R/4, R/4].
        """

        def session_run(chunk: torch.Tensor) -> list[torch.Tensor]:
            outputs = self.session.run(np.ascontiguousarray(chunk.cpu().numpy(), dtype=np.float32))
            return [torch.from_numpy(np.asarray(out, dtype=np.float32)) for out in outputs]

        step = self.batch_size if self.batch_size is not None else max(1, len(pixels))
        return export_outputs_to_dict(run_in_fixed_batches(session_run, pixels, step))

    def predict(
        self, images: ImageInput | Sequence[ImageInput], threshold: float = 0.5, timer: StageTimer | None = None
    ) -> Detections | list[Detections]:
        """Detect (and segment) objects; the same inputs and results as :meth:`rfdetr.detr.RFDETR.predict`.

        Args:
            images: one image or a list (paths, PIL images, RGB numpy arrays, [3, H, W] tensors in [0, 1]).
            threshold: keep detections with score > threshold.
            timer: records the ``preprocess``, ``forward`` and ``postprocess`` stages
                (:mod:`rfdetr.deploy.runtime.timing`).

        Returns:
            A :class:`Detections` per image (boxes and masks in original pixels); a list for list/batch input.
        """
        with timed(timer, "preprocess"):
            tensors, batched = load_images(images)
            if len(tensors) == 0:
                return []
            sizes = torch.tensor([t.shape[-2:] for t in tensors])  # [N, 2] (H, W)
            pixels = torch.cat([preprocess(t, self.resolution, "cpu", self.mean, self.std) for t in tensors])
        with timed(timer, "forward"):
            outputs = self.run(pixels)
        with timed(timer, "postprocess"), torch.inference_mode():
            results = self.postprocess(outputs, sizes, score_threshold=threshold)
            detections = [to_detections(r, threshold, self.class_names) for r in results]
        return detections if batched else detections[0]

    def __repr__(self) -> str:
        batch = "dynamic" if self.batch_size is None else self.batch_size
        return (
            f"{type(self).__name__}({str(self.path)!r}, format={self.format.name}, resolution={self.resolution}, "
            f"classes={len(self.class_names)}, masks={self.masks}, batch={batch})"
        )


class OnnxModel(ExportedModel):
    """An ``.onnx`` file in onnxruntime (the name from before other formats; :func:`load` serves every format).

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime intra-op threads.
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        super().__init__(path, threads, format="onnx", providers=providers)


def load(path: str | os.PathLike[str], threads: int | None = None) -> ExportedModel:
    """An exported file (``.onnx``, ``.tflite``, ``.xml``, ``.pte`` ...) ready to :meth:`~ExportedModel.predict`.

    Raises:
        FileNotFoundError, ImportError, ValueError: as :class:`ExportedModel`.
    """
    return ExportedModel(path, threads)
