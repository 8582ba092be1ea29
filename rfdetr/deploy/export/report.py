"""The export report written beside every exported file (``<file>.report.json``), and printed.

It says what the file is (format, precision, size), how fast it runs here, whether its detections agree with PyTorch
float32's within the tolerance the format states for that precision (:mod:`rfdetr.deploy.export.agreement`: matched
detections above the threshold on the check images, the calibration images, or one random input without either), the
raw slot-by-slot output differences labelled as such, and, when a dataset was given, what the file costs in COCO mAP
against the float32 model.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rfdetr.deploy.export.agreement import compare_detections, merge, stated_bound
from rfdetr.deploy.export.formats import ExportFormat, load_format
from rfdetr.deploy.export.metadata import sidecar_path
from rfdetr.util.run_dir import write_json_atomic

__all__ = [
    "build_report", "companion_files", "format_report", "remove_export", "report_path", "verdict", "write_report",
]

logger = logging.getLogger(__name__)

OUTPUTS = ("boxes", "logits", "masks")


def report_path(path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` -> ``model.onnx.report.json``."""
    path = Path(path)
    return path.with_name(path.name + ".report.json")


def companion_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files that make up an exported model: the file, an OpenVINO ``.bin``, the metadata JSON beside it."""
    path = Path(path)
    files = [path, sidecar_path(path)]
    if path.suffix == ".xml":
        files.append(path.with_suffix(".bin"))
    return files


def remove_export(path: str | os.PathLike[str]) -> None:
    """Delete an exported model's files (not its report)."""
    for file in companion_files(path):
        file.unlink(missing_ok=True)


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in companion_files(path) if f.exists() and f.suffix != ".json") / 1e6


def build_report(path: Path, fmt: ExportFormat, precision: str, module: nn.Module, inputs: Sequence[np.ndarray],
                 export_seconds: float, batch_size: int = 1, latency_runs: int = 5, num_select: int = 300,
                 compared_on: str | None = None, threshold: float = 0.5) -> dict[str, Any]:
    """Run the written file in its runtime against the PyTorch float32 ``module`` it came from.

    Args:
        path: the exported file.
        fmt: its format.
        precision: ``float32``, ``float16`` or ``int8``.
        module: the prepared float32 :class:`~rfdetr.deploy.export.graph.ExportForward`.
        inputs: network inputs [1, 3, R, R] (the calibration images, preprocessed).
        export_seconds: how long writing the file took.
        batch_size: the file's static batch (inputs are repeated to fill it).
        latency_runs: timed runs of the first input (after one warm-up run).
        num_select: the file's (query, class) pairs per image (its metadata), as ``predict`` keeps them.
        compared_on: what ``inputs`` are, for the report (``"4 check image(s)"`` ...).
        threshold: the detection threshold of the agreement check.
    """
    session = load_format(fmt).Session(path)
    diffs = dict.fromkeys(OUTPUTS[: 3 if module.with_masks else 2], 0.0)
    # The precision the float parts ran at here (formats whose file sets it), which the bound and the verdict are for.
    compute = getattr(session, "compute", None)
    bound = stated_bound(fmt, precision, compute)
    agreement = []
    for array in inputs:
        feed = np.repeat(array, batch_size, axis=0)
        got = [torch.from_numpy(np.asarray(out, dtype=np.float32)) for out in session.run(feed)]
        with torch.no_grad():
            expected = module(torch.from_numpy(feed))
        for name, ours, theirs in zip(diffs, got, expected, strict=True):
            diffs[name] = max(diffs[name], float((ours - theirs).abs().max()))
        # The first copy of the batch only: the others repeat it.
        agreement.append(compare_detections([t[:1] for t in expected], [t[:1] for t in got], bound, threshold,
                                             num_select))
    feed = np.repeat(inputs[0], batch_size, axis=0)
    session.run(feed)
    times = []
    for _ in range(latency_runs):
        start = time.perf_counter()
        session.run(feed)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "file": str(path), "format": fmt.name, "precision": precision,
        **({"compute": compute} if compute is not None else {}), "size_mb": round(_size_mb(path), 3),
        "export_seconds": round(export_seconds, 1),
        "latency_ms": {"median": round(statistics.median(times), 2), "runs": latency_runs, "batch": batch_size,
                       "threads": torch.get_num_threads(), "machine": f"{platform.machine()} {platform.processor()}"},
        "detections": merge(agreement),
        # Slot by slot over all Q proposals: near-tied proposals may trade slots, so this is no verdict.
        "max_abs_diff_vs_pytorch_float32": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        "compared_on": compared_on or (f"{len(inputs)} calibration image(s)" if len(inputs) > 1 or precision == "int8"
                                       else "1 random input"),
    }


def write_report(path: str | os.PathLike[str], report: Mapping[str, Any]) -> Path:
    """Write ``<file>.report.json`` (atomically) and log its summary."""
    out = write_json_atomic(report_path(path), dict(report))
    detections = report.get("detections") or {}
    logger.log(logging.WARNING if detections.get("meets") is False else logging.INFO, "%s", format_report(report))
    return out


def format_report(report: Mapping[str, Any]) -> str:
    """One readable paragraph of a report."""
    diffs = ", ".join(f"{k} {v:.2g}" for k, v in report["max_abs_diff_vs_pytorch_float32"].items())
    text = (f"{report['file']}: {report['format']} {_precision(report)}, {report['size_mb']:.1f} MB, "
            f"{report['latency_ms']['median']:.1f} ms per batch of {report['latency_ms']['batch']} here; "
            f"{verdict(report)}; raw outputs slot by slot (near-tied proposals may trade slots, no verdict): max "
            f"|diff| {diffs}")
    if "accuracy" in report:
        acc = report["accuracy"]
        parts = [f"{t} mAP50:95 {acc['exported'][t]:.4f} vs float32 {acc['float32'][t]:.4f} "
                 f"({abs(acc['drop_points'][t]):.2f} points {'lost' if acc['drop_points'][t] > 0 else 'gained'})"
                 for t in acc["exported"]]
        text += f"; on {acc['dataset']} {acc['split']}: " + ", ".join(parts)
    return text


def _precision(report: Mapping[str, Any]) -> str:
    """``int8``, or ``int8 (float parts in bfloat16 here)`` for a file whose float computation ran in bf16."""
    compute = report.get("compute")
    return report["precision"] + (f" (float parts in {compute} here)" if compute == "bfloat16" else "")


def verdict(report: Mapping[str, Any]) -> str:
    """Whether the file meets its format's stated tolerance, in words, with the numbers behind it."""
    det = report.get("detections")
    if det is None:
        return "detections not compared (a report from before the agreement check)"
    where = f"detections above {det['threshold']} on {report['compared_on']}"
    if det["compared"] == 0 and det["extra"] == 0:
        return (f"no {where} to compare (an untrained model, or no objects: pass --check_images DIR with real "
                f"pictures), so no verdict")
    bound = det["bound"]
    numbers = [f"score diff {det['max_score_diff']} (<= {bound['score']})",
               f"box IoU {det['min_box_iou']} (>= {bound['box_iou']})"]
    if det["min_mask_iou"] is not None:
        numbers.append(f"mask IoU {det['min_mask_iou']} (>= {bound['mask_iou']})")
    if det["meets"]:
        return f"MEETS the {report['format']} {_precision(report)} tolerance: {det['compared']} {where}, " + \
            ", ".join(numbers)
    return (f"DOES NOT MEET the {report['format']} {_precision(report)} tolerance: of {det['compared']} {where}, "
            f"{det['missing']} missing or off, {det['extra']} extra; " + ", ".join(numbers))


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A written report."""
    return json.loads(report_path(path).read_text())
