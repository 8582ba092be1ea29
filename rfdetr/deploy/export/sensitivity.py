"""Per-layer INT8 sensitivity of an ONNX export: which parts of the network may stay in float (mixed precision).

The quantizable nodes (:data:`rfdetr.deploy.export.int8.ONNX_INT8_OPS`) are grouped by the module that emitted
them (:func:`~rfdetr.deploy.export.int8.node_group`: one group per ViT block, the projector, each decoder layer, the
two-stage proposal heads, the box and class heads, the mask head). :func:`int8_sensitivity` quantizes one group at a
time, everything else float, and measures on held-out images how far the outputs move from float32; the groups that move
them most are the ones worth keeping in float, because the rest of the network costs little accuracy for a lot of speed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rfdetr.deploy.export.int8 import node_group, quantizable_groups

__all__ = ["GroupError", "int8_sensitivity", "node_group", "quantizable_groups", "output_errors"]

def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def output_errors(reference: Sequence[Sequence[np.ndarray]], other: Sequence[Sequence[np.ndarray]]) -> dict[str, float]:
    """Mean absolute differences of ``other``'s outputs from ``reference``'s, per output, over all images.

    Boxes are compared as they are (normalised cxcywh), logits and mask logits after the sigmoid (scores and mask
    probabilities: what decides the detections; raw logits far below zero may differ a lot and change nothing).
    """
    names = ("boxes", "logits", "masks")
    errors: dict[str, list[float]] = {}
    for ref, out in zip(reference, other, strict=True):
        for name, a, b in zip(names, ref, out, strict=False):
            if name != "boxes":
                a, b = _sigmoid(a), _sigmoid(b)
            errors.setdefault(name, []).append(float(np.abs(a - b).mean()))
    return {name: float(np.mean(v)) for name, v in errors.items()}


@dataclass(frozen=True)
class GroupError:
    """The outputs' mean abs error when only ``group`` (``nodes`` nodes) is INT8; group ``all`` is every node."""

    group: str
    nodes: int
    errors: dict[str, float]

    @property
    def score(self) -> float:
        """One number to rank groups by: the largest of the per-output errors."""
        return max(self.errors.values())


def int8_sensitivity(
    float_path: str | os.PathLike[str],
    calibration: Sequence[np.ndarray],
    held_out: Sequence[np.ndarray],
    groups: Sequence[str] | None = None,
) -> list[GroupError]:
    """Quantize each group alone (the rest float) and measure the outputs on ``held_out`` against float32.

    Args:
        float_path: a float32 ONNX export (:func:`rfdetr.deploy.export.formats.onnx.export`).
        calibration: calibration inputs [1, 3, R, R] float32.
        held_out: other inputs [1, 3, R, R] the errors are measured on.
        groups: the groups to try (default: every group of the file).

    Returns:
        One :class:`GroupError` per group, most sensitive first, then ``all`` (every group INT8).
    """
    from rfdetr.deploy.export.formats.onnx import Session, quantize

    float_session = Session(float_path, threads=1)
    reference = [float_session.run(x) for x in held_out]
    all_groups = quantizable_groups(float_path)
    every = [n for nodes in all_groups.values() for n in nodes]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for group in [*(groups or all_groups), "all"]:
            keep = set(every if group == "all" else all_groups[group])
            path = quantize(float_path, Path(tmp) / "q.onnx", calibration, exclude=[n for n in every if n not in keep])
            session = Session(path, threads=1)
            results.append(GroupError(group, len(keep), output_errors(reference, [session.run(x) for x in held_out])))
    ranked = sorted(results[:-1], key=lambda r: r.score, reverse=True)
    return [*ranked, results[-1]]
