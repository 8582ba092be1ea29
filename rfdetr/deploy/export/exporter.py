"""Export a model to any registered format: :func:`export_model`, behind :meth:`rfdetr.detr.RFDETR.export`."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from rfdetr.deploy.export.calibration import calibration_arrays, calibration_files
from rfdetr.deploy.export.formats import get_format, int8_formats, integer_io_formats, load_format
from rfdetr.deploy.export.graph import prepare_export
from rfdetr.deploy.export.int8 import DEFAULT_INT8_IO, INT8_IO
from rfdetr.deploy.export.report import (
    build_report,
    format_report,
    load_report,
    remove_export,
    verdict,
    write_report,
)
from rfdetr.deploy.runtime.evaluate import evaluate_predictor
from rfdetr.deploy.runtime.runner import ExportedModel
from rfdetr.util.atomic import temp_path_for

__all__ = ["add_accuracy", "default_file_name", "export_model", "int8_formats", "integer_io_formats", "onnx_options"]

logger = logging.getLogger(__name__)


def default_file_name(format: str, half: bool = False, int8: bool = False) -> str:
    """``inference_model.onnx``, ``inference_model_fp16.tflite``, ``inference_model_int8.xml`` ...: the file name
    when none is given."""
    fmt = get_format(format)
    return f"inference_model{'_int8' if int8 else '_fp16' if half else ''}{fmt.suffix}"


def onnx_options(format: str, opset: int = 17, dynamic_batch: bool = False, simplify: bool = False) -> dict[str, Any]:
    """The ONNX-only export options as the format's keyword arguments (empty for other formats).

    Raises:
        ValueError: an ONNX option changed from its default for another format.
    """
    if format == "onnx":
        return {"opset": opset, "dynamic_batch": dynamic_batch, "simplify": simplify}
    if dynamic_batch or simplify or opset != 17:
        raise ValueError(f"opset, dynamic_batch and simplify are ONNX options; {format!r} does not take them")
    return {}


def export_model(
    model: nn.Module,
    output_dir: str | os.PathLike[str],
    format: str,
    resolution: int,
    metadata: Mapping[str, str],
    *,
    batch_size: int = 1,
    half: bool = False,
    int8: bool = False,
    int8_io: str = DEFAULT_INT8_IO,
    compute: str = "auto",
    calibration: str | os.PathLike[str] | None = None,
    calibration_images: int = 64,
    check_images: str | os.PathLike[str] | None = None,
    with_masks: bool = True,
    file_name: str | None = None,
    report: bool = True,
    **options: Any,
) -> Path:
    """Write ``model``'s inference graph as a ``format`` file in ``output_dir``, with its report beside it.

    Args:
        model: an :class:`~rfdetr.models.detector.RFDETRModel` or a stage-2 :class:`~rfdetr.models.segmenter.Segmenter`
            (deep-copied, never modified).
        output_dir: folder of the file (created).
        format: a name of :data:`rfdetr.deploy.export.formats.FORMATS`.
        resolution: square input side R.
        metadata: :func:`rfdetr.deploy.export.metadata.export_metadata` entries.
        batch_size: static batch size of the file.
        half: float16 weights (where the format offers them).
        int8: full-integer INT8 (weights and activations), calibrated on ``calibration``.
        int8_io: type of an INT8 file's input and outputs, one of :data:`rfdetr.deploy.export.formats.INT8_IO`; integer
            types only for formats that offer them (tflite).
        compute: precision of the float computation, for formats whose file sets it (``ExportFormat.bf16``:
            openvino): ``float32``; ``bfloat16`` (faster, less exact: the float parts in bf16 on CPUs with native
            bf16, float32 elsewhere); ``auto``: bfloat16 for an INT8 file when this CPU has native bf16 and the
            report's detection check at bf16 agrees (else the file is rewritten to float32 and checked again),
            float32 otherwise. Other formats take only ``auto`` or ``float32``.
        calibration: a dataset folder or a folder of images, preprocessed as ``predict()`` does; needed with
            ``int8``, and without it the report compares outputs on one random input.
        calibration_images: how many calibration images to use.
        check_images: a dataset folder or a folder of pictures the report compares the file's detections with
            PyTorch's on (default: the calibration images, else one random input), up to ``calibration_images``.
        with_masks: keep the mask output when the model has one.
        file_name: name of the file (default: :func:`default_file_name`).
        report: write ``<file>.report.json`` (:mod:`rfdetr.deploy.export.report`).
        **options: the format's own options (ONNX: ``opset``, ``dynamic_batch``, ``simplify``).

    Returns:
        The written file.

    Raises:
        ValueError: unknown format, bad option, batch size or resolution; ``int8`` without calibration images or for
            a format that does not offer it; integer I/O without int8 or for a format without it; an empty or
            unreadable calibration folder.
        ImportError: the format's packages are missing (the message gives the pip command).
    """
    fmt = get_format(format)
    if int8 and half:
        raise ValueError("choose one of half (float16 weights) and int8")
    fmt.check_half(half)
    if int8 and fmt.int8 is None:
        raise ValueError(f"int8 is not offered for {format}; formats with int8: {', '.join(int8_formats())}")
    if int8_io not in INT8_IO:
        raise ValueError(f"int8_io must be one of {', '.join(INT8_IO)}, got {int8_io!r}")
    if int8_io != DEFAULT_INT8_IO and not (int8 and fmt.int8 is not None and int8_io in fmt.int8.io):
        raise ValueError(f"int8_io={int8_io!r} (integer input and outputs) needs int8=True and a format that offers "
                         f"it: {', '.join(integer_io_formats())}")
    if int8 and calibration is None:
        raise ValueError("int8 needs calibration images: pass calibration=DIR (--calibration DIR), a dataset folder "
                         "or a folder of the images the model will see")
    fmt.check_compute(compute)
    fmt.require(int8=int8)
    module_ = load_format(fmt)
    precision = "int8" if int8 else "float16" if half else "float32"
    name = file_name or default_file_name(format, half, int8)
    if not name.endswith(fmt.suffix):
        raise ValueError(f"file name {name!r} does not end with {fmt.suffix}, the suffix of {format} files")
    arrays = checks = None
    mean, std = json.loads(metadata["mean"]), json.loads(metadata["std"])
    if calibration is not None:
        arrays = calibration_arrays(calibration_files(calibration, calibration_images), resolution, mean, std)
    if check_images is not None:
        checks = calibration_arrays(calibration_files(check_images, calibration_images), resolution, mean, std)
    module, example = prepare_export(model, resolution, batch_size, with_masks)
    entries = {**metadata, "format": format, "precision": precision}
    auto_bf16 = False
    if fmt.bf16 is not None:
        auto_bf16 = compute == "auto" and int8 and module_.native_bf16()
        entries["compute"] = "bfloat16" if compute == "bfloat16" or auto_bf16 else "float32"
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if int8 and fmt.int8 is not None and fmt.int8.source == "graph":
        assert arrays is not None
        # Quantized from the PyTorch graph (PT2E): no float file in between.
        fmt.int8.load()(module, path, example, arrays, entries, batch=batch_size, io=int8_io)
    elif int8 and fmt.int8 is not None:
        assert arrays is not None
        # The float32 file is the quantizer's input; it is written beside the result under a hidden name and removed.
        float_path = temp_path_for(path)
        try:
            module_.export(module, float_path, example, entries, **options)
            fmt.int8.load()(float_path, path, arrays, entries, batch=batch_size)
        finally:
            remove_export(float_path)
    else:
        module_.export(module, path, example, entries, half=half, **options)
    seconds = time.perf_counter() - start
    if report:
        if checks is not None:
            inputs, compared_on = checks, f"{len(checks)} check image(s)"
        elif arrays is not None:
            inputs, compared_on = arrays, f"{len(arrays)} calibration image(s)"
        else:
            inputs, compared_on = [example[:1].numpy()], "1 random input"
        num_select = int(metadata.get("num_select", 300))
        built = build_report(path, fmt, precision, module, inputs, seconds, batch_size, num_select=num_select,
                             compared_on=compared_on)
        if auto_bf16 and built["detections"]["meets"] is False:
            # bf16 for the float remainder only where the check agrees, or where float32 does no better (then the
            # int8 rounding, not bf16, misses the bound, and bf16 is the faster of two failing files).
            module_.set_compute(path, "float32")
            at_f32 = build_report(path, fmt, precision, module, inputs, seconds, batch_size, num_select=num_select,
                                  compared_on=compared_on)
            if at_f32["detections"]["meets"] is False:
                module_.set_compute(path, "bfloat16")
                logger.warning("%s: the int8 file misses the %s int8 tolerance with its float parts in float32 as in "
                               "bfloat16; it keeps bfloat16", path, format)
            else:
                logger.warning("%s: with its float parts in bfloat16 the file does not meet the %s int8 tolerance "
                               "(%s); it computes in float32, which does", path, format, verdict(built))
                built = at_f32
        write_report(path, built)
    return path


def add_accuracy(path: str | os.PathLike[str], reference: Any, dataset: str | os.PathLike[str], split: str = "valid",
                 max_map_drop: float | None = None) -> dict[str, Any]:
    """COCO mAP50:95 of the exported file and of its float32 ``reference`` on ``dataset``, added to the report.

    Args:
        path: the exported file (its report must exist).
        reference: the float32 model it came from (anything with ``predict``, ``class_names`` and ``masks``).
        dataset: a COCO dataset folder.
        split: the split scored.
        max_map_drop: refuse the file when bbox or segm mAP50:95 drops by more than this many points: its files
            are deleted, the report (marked ``refused``) is kept, and ValueError is raised.

    Returns:
        The report's ``accuracy`` entry.

    Raises:
        ValueError: the file lost more than ``max_map_drop`` points (the message gives the numbers).
    """
    theirs = evaluate_predictor(ExportedModel(path), dataset, split, progress=False)
    ours = evaluate_predictor(reference, dataset, split, progress=False)
    types = [t for t in ("bbox", "segm") if t in theirs and t in ours]
    accuracy = {
        "dataset": str(dataset), "split": split, "images": theirs["images"],
        "exported": {t: theirs[t]["mAP"] for t in types}, "float32": {t: ours[t]["mAP"] for t in types},
        "exported_mAP50": {t: theirs[t]["mAP50"] for t in types}, "float32_mAP50": {t: ours[t]["mAP50"] for t in types},
        "drop_points": {t: round(100 * (ours[t]["mAP"] - theirs[t]["mAP"]), 3) for t in types},
        "max_map_drop": max_map_drop,
    }
    report = load_report(path)
    report["accuracy"] = accuracy
    worst = max(accuracy["drop_points"].values(), default=0.0)
    refused = max_map_drop is not None and worst > max_map_drop
    report["refused"] = refused
    write_report(path, report)
    if refused:
        remove_export(path)
        raise ValueError(f"{path} refused: it loses {worst:.2f} mAP50:95 points on {dataset} {split}, more than "
                         f"--max_map_drop {max_map_drop}; the file was deleted, its report kept: "
                         f"{format_report(report)}")
    return accuracy
