"""User-facing API, familiar to rfdetr users: ``RFDETRNano(...).predict(image)``.

(Over 450 lines: the whole user API is one class, as rfdetr users know it, plus the 14 preset classes; the machinery
behind each method lives in :mod:`rfdetr.checkpoint` and :mod:`rfdetr.deploy`, and this file only delegates.)

One class per preset of :data:`rfdetr.config.MODEL_PRESETS` (``RFDETRNano`` ... ``RFDETRSeg2XLarge``), each a
one-line subclass of :class:`RFDETR` that only names its preset. ``RFDETR.from_checkpoint(path)`` picks the class
from the checkpoint's tensors.

Inference follows rfdetr 1.11.2 (spec sections 8 and 9): RGB in [0, 1], bilinear resize to the square resolution
without antialias, ImageNet normalisation, fp32 eval forward, top-``num_select`` post-processing with boxes (and
masks) at the original image size, then ``score > threshold``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from rfdetr.checkpoint import (
    CheckpointError,
    LoadReport,
    checkpoint_category_ids,
    checkpoint_class_names,
    extract_state_dict,
    infer_model_config,
    load_checkpoint_file,
    load_into,
)
from rfdetr.checkpoint.files import state_sha256
from rfdetr.checkpoint.huggingface import save_model_as_transformers
from rfdetr.checkpoint.loading import attach_mask_head, model_config_for_checkpoint, resolve_class_names, split_stage2
from rfdetr.checkpoint.weights import PRESET_WEIGHTS, resolve_weights
from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD, MODEL_PRESETS, TINY_CONFIG, TINY_SEG_CONFIG, ModelConfig
from rfdetr.data.coco_classes import COCO_CLASSES
from rfdetr.deploy.export.exporter import add_accuracy, export_model, onnx_options
from rfdetr.deploy.export.formats import DEFAULT_INT8_IO
from rfdetr.deploy.export.metadata import export_metadata
from rfdetr.deploy.runtime.detections import Detections
from rfdetr.deploy.runtime.evaluate import evaluate_predictor
from rfdetr.deploy.runtime.optimize import ENGINES, optimize_model
from rfdetr.deploy.runtime.processing import (  # noqa: F401 - _to_chw01 and ImageInput stay importable from here
    ImageInput,
    _to_chw01,
    export_outputs_to_dict,
    load_images,
    preprocess,
    run_in_fixed_batches,
    to_detections,
)
from rfdetr.deploy.runtime.runner import ExportedModel
from rfdetr.deploy.runtime.timing import StageTimer, timed
from rfdetr.models import PostProcess, build_model
from rfdetr.models.mask_head import MaskHead, MaskHeadConfig, MaskHeadNano
from rfdetr.models.segmenter import Segmenter
from rfdetr.train.api import TrainingMethods

__all__ = [
    "COCO_CLASS_NAMES", "Detections", "RFDETR", "RFDETRBase", "RFDETRLarge", "RFDETRMedium", "RFDETRNano",
    "RFDETRSeg2XLarge", "RFDETRSegLarge", "RFDETRSegMedium", "RFDETRSegNano", "RFDETRSegPreview", "RFDETRSegSmall",
    "RFDETRSegXLarge", "RFDETRSmall",
]

logger = logging.getLogger(__name__)

# COCO's 91 label slots indexed by category id (the official checkpoints' logit index), "N/A" where COCO has none.
COCO_CLASS_NAMES: tuple[str, ...] = COCO_CLASSES



def _with_frozen_detector(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """A stage-2 run's ``checkpoint.pth`` (its resume state) holds the mask head only and names its frozen detector's
    file and hash: the complete model is that detector plus this head. Other checkpoints come back as they are.

    Raises:
        CheckpointError: the detector file is gone or holds other weights than the run trained with.
    """
    ref = ckpt.get("detector_source")
    if not isinstance(ref, dict):
        return ckpt
    source, best = Path(str(ref.get("path"))), path.with_name("checkpoint_best_total.pth")
    if not source.is_file():
        raise CheckpointError(f"{path} holds a stage-2 run's mask head only, and its frozen detector {source} no "
                              f"longer exists: load {best} (a complete model) or restore {source}")
    detector = {k: v for k, v in extract_state_dict(load_checkpoint_file(source)).items()
                if not k.startswith((MaskHead.key_prefix, MaskHeadNano.key_prefix))}
    if state_sha256(detector) != ref.get("sha256"):
        raise CheckpointError(f"{path} holds a stage-2 run's mask head only, and its frozen detector {source} has "
                              f"changed since that run: load {best} (a complete model)")
    return {**ckpt, "model": {**detector, **ckpt["model"]}}

class RFDETR(TrainingMethods):
    """An RF-DETR model ready for inference: weights, class names and pre/post-processing.

    Use a preset subclass (``RFDETRNano``, ``RFDETRSegSmall`` ...) or :meth:`from_checkpoint`.

    Args:
        pretrain_weights: a checkpoint path, a Hugging Face transformers RF-DETR folder (or its model.safetensors)
            or an official weight name (``rf-detr-nano.pth`` ...). ``None`` loads the
            preset's official COCO weights (from the cache, downloading them if needed), as rfdetr does; ``False``
            builds a randomly initialised model.
        num_classes: number of classes (the head has ``num_classes + 1`` logits). Default: the checkpoint's. A
            different value re-initialises the class heads (logged).
        class_names: names indexed by class id. Default: the checkpoint's, else the COCO names for a 91-logit
            model, else ``class_{i}``.
        resolution: square input side; must be a multiple of ``patch_size * num_windows``. The stored position
            embeddings are interpolated to it when the preset derives them from the resolution.
        device: torch device; default CUDA when available, else CPU.
        masks: whether :meth:`predict` returns masks. Default: on for segmentation presets and for stage-2
            checkpoints (``train_seg_stage2.py``: a detector plus a MaskHead / MaskHeadNano, rebuilt from the
            checkpoint's ``mask_head`` entry). ``False`` with a stage-2 checkpoint loads the detector alone.

    Attributes:
        model: the ``nn.Module`` (eval mode, on ``device``).
        model_config: its :class:`ModelConfig`.
        class_names: names indexed by class id.
        load_report: what happened when the weights were loaded (``None`` without weights).
    """

    size: ClassVar[str | None] = None  # preset key of MODEL_PRESETS; set by the per-preset subclasses

    def __init__(
        self,
        pretrain_weights: str | os.PathLike[str] | bool | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        resolution: int | None = None,
        device: str | torch.device | None = None,
        masks: bool | None = None,
    ) -> None:
        if self.size is None:
            raise TypeError("RFDETR is abstract: use a preset class such as RFDETRNano, or RFDETR.from_checkpoint()")
        ckpt = None
        self.weights_path: Path | None = None
        if pretrain_weights is not False:
            if pretrain_weights is None or pretrain_weights is True:
                pretrain_weights = PRESET_WEIGHTS[self.size]
            self.weights_path = Path(resolve_weights(pretrain_weights))
            ckpt = _with_frozen_detector(load_checkpoint_file(self.weights_path), self.weights_path)
        self._setup(ckpt, num_classes, class_names, resolution, device, masks)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], **kwargs: Any) -> RFDETR:
        """Load a checkpoint of any supported layout as the preset class its tensors match.

        Called on :class:`RFDETR` the class is inferred (e.g. a seg-small file gives an ``RFDETRSegSmall``); called
        on a preset class, that class is used. ``kwargs`` are the constructor's (except ``pretrain_weights``).
        """
        weights = Path(resolve_weights(path))
        ckpt = _with_frozen_detector(load_checkpoint_file(weights), weights)
        target = cls
        if cls.size is None:
            detector_state, _, _ = split_stage2(ckpt, extract_state_dict(ckpt))
            target = model_class(infer_model_config(detector_state, ckpt).name)
        obj = target.__new__(target)
        obj.weights_path = weights
        obj._setup(ckpt, **kwargs)
        return obj

    # ----------------------------------------------------------------------------------------------------- setup

    def _setup(
        self,
        ckpt: dict[str, Any] | None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        resolution: int | None = None,
        device: str | torch.device | None = None,
        masks: bool | None = None,
    ) -> None:
        state_dict = extract_state_dict(ckpt) if ckpt is not None else None
        head_state: dict[str, torch.Tensor] = {}
        head_cfg: MaskHeadConfig | None = None
        if ckpt is not None and state_dict is not None:
            # A stage-2 checkpoint is a detector checkpoint plus the mask head's keys: the detector loads as usual.
            state_dict, head_state, head_cfg = split_stage2(ckpt, state_dict)
        cfg = self._config_for(state_dict, ckpt, num_classes, resolution)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = build_model(cfg)
        self.load_report: LoadReport | None = None
        if state_dict is not None:
            try:
                self.load_report = load_into(self.model, state_dict)
            except CheckpointError as err:
                raise CheckpointError(f"cannot load the checkpoint into {type(self).__name__}: {err}") from None
        if head_cfg is not None and masks is not False:
            self.model = attach_mask_head(self.model, head_cfg, head_state, type(self).__name__)
        self.model.to(self.device).eval()
        # Checkpoint names only describe the checkpoint's own class heads, not re-initialised ones.
        heads_loaded = self.load_report is not None and not self.load_report.reinitialized
        ckpt_names = checkpoint_class_names(ckpt) if ckpt is not None and heads_loaded else None
        self.class_names = resolve_class_names(cfg.num_classes + 1, class_names, ckpt_names)
        # The config records only real names (given or from the checkpoint), never the COCO / class_{i} fallbacks,
        # so that a checkpoint saved from it does not claim names nobody chose.
        recorded = class_names if class_names is not None else ckpt_names
        self.model_config = cfg.replace(class_names=tuple(recorded or ()))
        # The training dataset's category id of each class, when the checkpoint records them (and names were not
        # replaced): predictions then carry the dataset's ids, so its own annotation file scores them.
        ids = checkpoint_category_ids(ckpt) if ckpt is not None and heads_loaded and class_names is None else None
        self.category_ids: list[int] | None = ids if ids is not None and len(ids) <= len(self.class_names) else None
        has_masks = cfg.segmentation_head or isinstance(self.model, Segmenter)
        self.masks = has_masks if masks is None else bool(masks)
        if masks and not has_masks:
            logger.warning("masks=True but %s has no mask head: predictions will carry no masks", type(self).__name__)
        self.postprocess = PostProcess(num_select=cfg.num_select)
        self._optimized: nn.Module | None = None
        self._optimized_dtype = torch.float32
        self._optimized_batch = 1
        self._engine: ExportedModel | None = None

    def _config_for(
        self,
        state_dict: dict[str, torch.Tensor] | None,
        ckpt: dict[str, Any] | None,
        num_classes: int | None,
        resolution: int | None,
    ) -> ModelConfig:
        """This class's preset aligned with the checkpoint and the overrides (a subclass may change the result)."""
        return model_config_for_checkpoint(str(self.size), state_dict, ckpt, num_classes, resolution)

    @property
    def resolution(self) -> int:
        """Square side images are resized to."""
        return self.model_config.resolution

    # ----------------------------------------------------------------------------------------------------- predict

    def predict(
        self, images: ImageInput | Sequence[ImageInput], threshold: float = 0.5, timer: StageTimer | None = None
    ) -> Detections | list[Detections]:
        """Detect (and segment) objects.

        Args:
            images: one image or a list of them. An image is a file path, a PIL image, an RGB uint8 numpy array
                [H, W, 3] (or float in [0, 1]), or a float tensor [3, H, W] in [0, 1]; a [B, 3, H, W] tensor is a
                batch.
            threshold: keep detections with score > threshold.
            timer: records the ``preprocess``, ``forward`` and ``postprocess`` stages
                (:mod:`rfdetr.deploy.runtime.timing`).

        Returns:
            A :class:`Detections` per image (boxes and masks in original pixels); a list for list/batch input.

        Raises:
            ValueError: an input has the wrong type, channel count or value range, or cannot be read.
        """
        with timed(timer, "preprocess", self.device):
            tensors, batched = load_images(images)
            if len(tensors) == 0:
                return []
            sizes = torch.tensor([t.shape[-2:] for t in tensors], device=self.device)  # [B, 2] (H, W)
            pixels = torch.cat([preprocess(t, self.resolution, self.device) for t in tensors])  # [B, 3, R, R]
        with torch.inference_mode():
            with timed(timer, "forward", self.device):
                outputs = self._forward(pixels)
            with timed(timer, "postprocess", self.device):
                with_masks = self.masks and "pred_masks" in outputs
                if not with_masks:
                    outputs.pop("pred_masks", None)
                results = self.postprocess(outputs, sizes, score_threshold=threshold)
                detections = [to_detections(r, threshold, self.class_names) for r in results]
        return detections if batched else detections[0]

    def _forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Final-layer outputs: ``pred_logits``, ``pred_boxes`` [, ``pred_masks``], in float32."""
        if self._engine is not None:
            return {k: v.to(pixels.device) for k, v in self._engine.run(pixels).items()}
        if self._optimized is None:
            out = self.model(pixels)
            return {k: out[k] for k in ("pred_logits", "pred_boxes", "pred_masks") if k in out}
        optimized, dtype = self._optimized, self._optimized_dtype
        merged = run_in_fixed_batches(lambda chunk: optimized(chunk.to(dtype)), pixels, self._optimized_batch)
        return export_outputs_to_dict(merged)

    # ------------------------------------------------------------------------------------------------ optimisation

    def optimize_for_inference(
        self,
        dtype: torch.dtype = torch.float32,
        batch_size: int = 1,
        compile: bool = True,
        engine: str = "torch",
        int8: bool = False,
        calibration: str | os.PathLike[str] | None = None,
        calibration_images: int = 64,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        fallback: bool = False,
    ) -> nn.Module | ExportedModel:
        """Install a faster copy of the network that :meth:`predict` then uses (same pre- and post-processing).

        ``engine="torch"`` (rfdetr's behaviour): the single-group export graph cast to ``dtype`` and, with
        ``compile``, traced with ``torch.jit.trace`` at ``batch_size`` x 3 x R x R. ``"onnxruntime"``,
        ``"openvino"``, ``"tflite"``: the model exported once to that runtime (``int8``: full-integer, calibrated on
        ``calibration``), the file cached beside the weights under a key of their hash and the settings (its export
        time logged, its reuse said), then run there. ``"auto"``: on a CPU, every installed runtime (and PyTorch,
        unless ``int8``) is built or reused and timed here at 1 x 3 x R x R, and the fastest installed; the decision
        is cached in a JSON beside the files, keyed by the weights, the settings and this host (CPU model, its
        bf16 / VNNI / AMX flags, ``threads``), so the next call neither exports nor measures. On a GPU, PyTorch.
        ``python -m rfdetr.predict`` / ``rfdetr.evaluate --engine`` run this same code
        (:func:`rfdetr.deploy.runtime.optimize.optimize_model`) and share its cache.

        Args:
            dtype: PyTorch engine: ``torch.float32`` or ``torch.bfloat16`` (``torch.float16`` on CUDA).
            batch_size: traced / exported batch size.
            compile: PyTorch engine: trace the copy; without it the copy runs eagerly.
            engine: ``auto``, ``torch``, ``onnxruntime``, ``openvino`` or ``tflite``.
            int8: runtime engines: full-integer INT8.
            calibration: runtime engines: calibration images (a dataset folder or a folder of images).
            calibration_images: how many to use.
            cache_dir: where exported files are cached (default: ``.rfdetr_optimized/`` beside the weights).
            threads: the runtime's threads (and PyTorch's while ``auto`` times it).
            fallback: a named engine whose packages are missing gives the PyTorch engine (float32, even with
                ``int8``) and one warning line with the pip command, instead of ImportError (the command lines
                use this).

        Returns:
            The installed module or :class:`~rfdetr.deploy.runtime.runner.ExportedModel`.

        Raises:
            ValueError: bad dtype, batch size or engine; ``int8`` without calibration or with ``engine="torch"``.
            ImportError: a named engine's packages are missing (the message gives the pip command), unless
                ``fallback``.
        """
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

        def export(engine: str, where: Path, name: str) -> Path:
            return self.export(where, format=ENGINES[engine], batch_size=batch_size, file_name=name, int8=int8,
                               calibration=calibration, calibration_images=calibration_images)

        self.remove_optimized_model()
        optimized = optimize_model(
            self.model, engine, self.device, masks=self.masks, resolution=self.resolution, export=export,
            weights_path=self.weights_path, dtype=dtype, batch_size=batch_size, compile=compile, int8=int8,
            calibration=calibration, calibration_images=calibration_images, cache_dir=cache_dir, threads=threads,
            fallback=fallback,
        )
        if isinstance(optimized, ExportedModel):
            self._engine = optimized
        else:
            self._optimized, self._optimized_dtype, self._optimized_batch = optimized, dtype, batch_size
        return optimized

    def remove_optimized_model(self) -> None:
        """Go back to the eager fp32 PyTorch model in :meth:`predict`."""
        self._optimized = None
        self._optimized_dtype = torch.float32
        self._optimized_batch = 1
        self._engine = None

    # ------------------------------------------------------------------------------------------------------ export

    def export(
        self,
        output_dir: str | os.PathLike[str] = "output",
        format: str = "onnx",
        half: bool = False,
        batch_size: int = 1,
        file_name: str | None = None,
        opset: int = 17,
        dynamic_batch: bool = False,
        simplify: bool = False,
        int8: bool = False,
        calibration: str | os.PathLike[str] | None = None,
        calibration_images: int = 64,
        dataset: str | os.PathLike[str] | None = None,
        split: str = "valid",
        max_map_drop: float | None = None,
        int8_io: str = DEFAULT_INT8_IO,
        check_images: str | os.PathLike[str] | None = None,
        compute: str = "auto",
    ) -> Path:
        """Export the model for deployment, in any format of :data:`rfdetr.deploy.export.formats.FORMATS`.

        Every file has the same contract: input [B, 3, R, R] (R = :attr:`resolution`; RGB in [0, 1], bilinearly
        resized without antialias, then normalised with the ImageNet mean / std), outputs boxes [B, Q, 4]
        normalised cxcywh, logits [B, Q, K] and, when :attr:`masks` is on, mask logits [B, Q, R/4, R/4]; class
        names, resolution, mean and std in the file or in a JSON beside it. Run it with :func:`rfdetr.deploy.load`,
        whose ``predict`` returns the same :class:`Detections` as :meth:`predict`.

        Args:
            output_dir: folder of the file (created).
            format: ``onnx``, ``tflite``, ``openvino``, ``executorch`` ...
            half: float16 weights, where the format offers them.
            batch_size: the static batch size of the file (the traced batch with ``dynamic_batch``).
            file_name: name of the written file (default ``inference_model[_fp16].<suffix>``).
            opset: ONNX only: opset, 16..20.
            dynamic_batch: ONNX only: symbolic batch dimension instead of ``batch_size``.
            simplify: ONNX only: run onnxsim when installed (logged no-op otherwise).
            int8: full-integer INT8 (weights and activations) calibrated on ``calibration``.
            calibration: a dataset folder or a folder of images for INT8 calibration (and for the report's output
                comparison).
            calibration_images: how many of them to use.
            dataset: a COCO dataset: the report then holds the file's bbox / segm mAP50:95 against this model's.
            split: the dataset split scored.
            max_map_drop: with ``dataset``, refuse a file that loses more mAP50:95 points: it is deleted, its
                report kept, and ValueError raised.
            int8_io: with ``int8``, the type of the file's input and outputs: ``float`` (float32), ``int8`` or
                ``uint8`` (integer I/O for NPUs; tflite only; :func:`rfdetr.deploy.load` converts either way).
            check_images: a dataset folder or a folder of pictures on which the report checks the file's detections
                against this model's (default: the calibration images, else one random input).
            compute: precision of the float computation where the file sets it (openvino): ``float32``,
                ``bfloat16`` (faster, less exact: bf16 on CPUs with native bf16, float32 elsewhere) or ``auto``
                (bfloat16 for an INT8 file when this CPU has native bf16 and the report's check at bf16 agrees,
                else float32). Not ``half``, which means float16 weights computed in float32.

        A report is written beside the file as ``<file>.report.json`` and logged (:mod:`rfdetr.deploy.export.report`):
        format, precision, size, latency, and whether the file's detections agree with this model's within the
        tolerance its format states for that precision (matched detections above 0.5 on ``check_images``).

        Returns:
            The path of the written file.

        Raises:
            ValueError: unknown format, an option the format does not take, an empty or unreadable calibration
                folder, or a file refused by ``max_map_drop``.
            ImportError: the format's packages are not installed (the message gives the pip command).
        """
        options = onnx_options(format, opset, dynamic_batch, simplify)
        ids = {"category_ids": self.category_ids} if self.category_ids is not None else {}
        metadata = export_metadata(type(self).__name__, self.class_names, self.resolution, IMAGENET_MEAN,
                                   IMAGENET_STD, self.postprocess.num_select, self.masks, **ids)
        if max_map_drop is not None and dataset is None:
            raise ValueError("max_map_drop needs a dataset to measure the drop on (dataset=DIR, --dataset DIR)")
        path = export_model(self.model, output_dir, format, self.resolution, metadata, batch_size=batch_size,
                            half=half, int8=int8, int8_io=int8_io, compute=compute, calibration=calibration,
                            calibration_images=calibration_images, check_images=check_images,
                            with_masks=self.masks, file_name=file_name, **options)
        if dataset is not None:
            add_accuracy(path, self, dataset, split, max_map_drop)
        return path

    def evaluate(self, dataset_dir: str | os.PathLike[str], split: str = "valid", max_dets: int = 100,
                 progress: bool = True) -> dict[str, Any]:
        """COCO metrics of this model on a dataset split, as ``python -m rfdetr.evaluate`` computes them.

        Args:
            dataset_dir: a COCO (Roboflow layout) or YOLO dataset folder.
            split: ``valid`` (or ``val``), ``test`` or ``train``.
            max_dets: detections per image COCOeval considers.
            progress: show a progress bar.

        Returns:
            ``{"split", "images", "bbox": {...}, "segm": {...} (with masks), "summary"}``; each iou type holds
            ``mAP`` (50:95), ``mAP50``, ``mAP75``, the 12 COCO ``stats`` and ``per_class_AP`` / ``per_class_AP50``.
        """
        return evaluate_predictor(self, dataset_dir, split, max_dets=max_dets, progress=progress)

    def save_pretrained(self, output_dir: str | os.PathLike[str]) -> Path:
        """Write a Hugging Face transformers folder (config.json, model.safetensors, preprocessor_config.json).

        ``transformers.AutoModelForObjectDetection.from_pretrained(output_dir)`` loads a detector from it
        (``AutoModelForInstanceSegmentation`` a segmentation preset or a stage-2 model with the full MaskHead), with
        :attr:`class_names` as ``id2label``; :meth:`from_checkpoint` reads it back. See
        :mod:`rfdetr.checkpoint.huggingface`.

        Raises:
            CheckpointError: a stage-2 head transformers has no class for (MaskHeadNano, MaskHeadDynamic).
            ImportError: safetensors is not installed (``pip install 'rtdetr-seg[hf]'``).
        """
        return save_model_as_transformers(self.model, self.model_config, self.class_names, output_dir)

    def __repr__(self) -> str:
        cfg = self.model_config
        return (
            f"{type(self).__name__}(resolution={cfg.resolution}, num_classes={cfg.num_classes}, "
            f"masks={self.masks}, device={self.device})"
        )


def _preset_class(key: str) -> type[RFDETR]:
    """The subclass of :class:`RFDETR` for one preset, named after rfdetr's class (``RFDETRNano`` ...)."""
    cfg = MODEL_PRESETS[key]
    doc = (
        f"RF-DETR {key}: {cfg.resolution}px input, patch {cfg.patch_size}, {cfg.dec_layers} decoder layers, "
        f"{cfg.num_queries} queries{', instance masks' if cfg.segmentation_head else ''}. See :class:`RFDETR`."
    )
    return type(cfg.upstream_name, (RFDETR,), {"size": key, "__doc__": doc, "__module__": __name__})


RFDETRNano = _preset_class("nano")
RFDETRSmall = _preset_class("small")
RFDETRMedium = _preset_class("medium")
RFDETRLarge = _preset_class("large")
RFDETRBase = _preset_class("base")
RFDETRSegPreview = _preset_class("seg-preview")
RFDETRSegNano = _preset_class("seg-nano")
RFDETRSegSmall = _preset_class("seg-small")
RFDETRSegMedium = _preset_class("seg-medium")
RFDETRSegLarge = _preset_class("seg-large")
RFDETRSegXLarge = _preset_class("seg-xlarge")
RFDETRSeg2XLarge = _preset_class("seg-2xlarge")

# Preset key -> class, e.g. for RFDETR.from_checkpoint.
PRESET_CLASSES: dict[str, type[RFDETR]] = {
    cls.size: cls
    for cls in (
        RFDETRNano, RFDETRSmall, RFDETRMedium, RFDETRLarge, RFDETRBase, RFDETRSegPreview, RFDETRSegNano,
        RFDETRSegSmall, RFDETRSegMedium, RFDETRSegLarge, RFDETRSegXLarge, RFDETRSeg2XLarge,
    )
    if cls.size is not None
}


# The ~1M-parameter CPU test / demo configurations (``--size tiny``, ``seg-tiny``); no official weights exist for
# them, so they are not rfdetr presets, and ``from_checkpoint`` picks them only for a checkpoint that records them.
RFDETRTiny: type[RFDETR] = type(
    "RFDETRTiny", (RFDETR,),
    {"size": TINY_CONFIG.name, "__module__": __name__,
     "__doc__": "The tiny CPU test configuration (not an rfdetr preset; never loads official weights)."},
)
RFDETRSegTiny: type[RFDETR] = type(
    "RFDETRSegTiny", (RFDETR,),
    {"size": TINY_SEG_CONFIG.name, "__module__": __name__,
     "__doc__": "The tiny single-stage segmentation test configuration (not an rfdetr preset)."},
)


def model_class(size: str) -> type[RFDETR]:
    """The :class:`RFDETR` subclass of a preset key (``nano``, ``seg-nano`` ..., or ``tiny``).

    Raises:
        ValueError: unknown key; the message lists the valid ones.
    """
    if size == TINY_CONFIG.name:
        return RFDETRTiny
    if size == TINY_SEG_CONFIG.name:
        return RFDETRSegTiny
    if size not in PRESET_CLASSES:
        raise ValueError(f"unknown model size {size!r}; choose auto, {', '.join(PRESET_CLASSES)}, tiny or seg-tiny")
    return PRESET_CLASSES[size]


def load_model(weights: str | os.PathLike[str], size: str = "auto", **kwargs: Any) -> RFDETR:
    """A model from a checkpoint file, for the command-line tools.

    Args:
        weights: checkpoint path (ours, rfdetr's, or a stage-2 checkpoint) or an official weight name.
        size: ``auto`` infers the preset from the tensors (:meth:`RFDETR.from_checkpoint`); otherwise a preset key
            of :func:`model_class` (``tiny`` is found by ``auto`` only in a checkpoint that records it).
        **kwargs: constructor arguments (``resolution``, ``device``, ``masks`` ...).

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        CheckpointError: the file cannot be loaded into the model.
    """
    if size == "auto":
        return RFDETR.from_checkpoint(weights, **kwargs)
    return model_class(size)(pretrain_weights=weights, **kwargs)
