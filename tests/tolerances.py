"""Where the tests' numeric tolerances come from: one error model for every comparison of two numeric paths.

Two float32 computations of the same network (PyTorch against an exported runtime, one kernel against another)
differ by rounding only, and how much depends on the host: oneDNN, MLAS, XNNPACK and OpenVINO pick their kernels,
blocking and reduction order per CPU (hosts seen: AVX2-only AMD EPYC, AVX-512 + AMX Intel Xeon, AMD EPYC Zen 4 with
AVX-512 / BF16 / VNNI and no AMX). A tolerance copied from the last value one host printed fails on the next one.

The model used here instead:

* **float32 against float32**: the network's own float32 rounding error on the very input, measured against a
  float64 copy of the PyTorch model (:func:`rounding_error`), times :data:`FLOAT32_FACTOR`, with a floor of
  :data:`ULPS` units in the last place of the output magnitude. The measurement captures how much a given model
  amplifies rounding (a random-weight deep model amplifies it a lot, and near-tied proposals of a two-stage DETR may
  even swap places), so the bound scales with the model and the input rather than with one host's kernels.
* **scores**: a score is ``sigmoid(logit)``, whose slope is at most 1/4, so a logit bound ``L`` is a score bound
  ``L / 4`` (:func:`score_bound`).
* **boxes**: a bound ``e`` (pixels) on every corner gives a worst-case IoU (:func:`box_iou_lower_bound`).
* **float16 weights**: unit roundoff 2^-11 relative to the magnitudes (:data:`FLOAT16_UNIT_ROUNDOFF`); the tests
  state the measured spread beside their bounds.
* **mixed precision** (autocast bf16 / fp16 against float32 training losses): a first-order rounding model with
  the tiny network's depth (:func:`amp_loss_rtol`).
* **INT8**: the quantisation step (calibrated range / 255) propagated to the logits is not a small, smooth error, so
  its bounds are a measured spread over the hosts seen with margin (:data:`INT8_SCORE_BOUND`,
  :data:`INT8_MASK_LOGIT_BOUND`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from rfdetr.deploy.export.formats import FORMATS

# Unit roundoff (half an ulp relative to the value) of float32, float16 (11 significant bits) and bfloat16 (8).
FLOAT32_UNIT_ROUNDOFF = 2.0**-24
FLOAT16_UNIT_ROUNDOFF = 2.0**-11
BFLOAT16_UNIT_ROUNDOFF = 2.0**-8

# Two float32 paths each within ``err`` of the exact (float64) result are within ``2 * err`` of each other (worst
# case; sqrt(2) * err for independent errors of that size). A second factor 2 is margin: the other path may block
# its reductions differently (a longer accumulation chain, fused multiply-adds, another exp / erf / sigmoid
# approximation), and the max over many outputs of the other path need not fall on the same output. Measured on the
# Zen 4 host (tiny detector and segmenter, raw outputs on randn pixels, seeds 5 and 6; /work/tmp/tol/m_ratio.py), the
# runtime-vs-PyTorch max difference over the float32-vs-float64 one was at most 1.37x for onnxruntime, 1.18x for
# OpenVINO, 2.74x for LiteRT (its logits: 3.8e-6 against 1.4e-6; boxes and masks <= 1.13x) and 2.40x for ExecuTorch
# / XNNPACK (logits 3.3e-6 against 1.4e-6; boxes and masks <= 1.13x): the XNNPACK runtimes use up 60-70% of the 4x.
# The seg-preview detections' scores differed by 2.15e-4 from both float64 and LiteRT (1.0x).
FLOAT32_FACTOR = 4.0
# A floor for outputs the model computes almost exactly (float64 agrees to an ulp): a few ulps of the magnitude.
ULPS = 4.0
# Sigmoid's largest slope (at 0): |sigmoid(a) - sigmoid(b)| <= |a - b| / 4.
SIGMOID_MAX_SLOPE = 0.25


@dataclass(frozen=True)
class Tolerance:
    """Max abs differences allowed between two paths' raw outputs (normalised cxcywh boxes, class logits, mask
    logits)."""

    boxes: float
    logits: float
    masks: float = 0.0


def ulp_floor(magnitude: float, ulps: float = ULPS) -> float:
    """``ulps`` float32 ulps of ``magnitude`` (an ulp is 2 unit roundoffs relative to the value)."""
    return ulps * 2 * FLOAT32_UNIT_ROUNDOFF * max(magnitude, 1e-30)


def reordered_sum_bound(k: int, magnitude: float, sigmas: float = 4.0) -> float:
    """Bound on how far one float32 dot product of ``k`` terms can move when only its summation order changes.

    Each of the k roundings errs by at most 2^-24 of the running sum (<= ``magnitude``); random-sign rounding errors
    add as sqrt(k) (Higham and Mary's probabilistic bound), and ``sigmas`` standard deviations of that walk bound
    it with a failure probability below 1e-4 per output. The worst case k x 2^-24 x magnitude is 4x larger at k=256.
    """
    return sigmas * np.sqrt(k) * FLOAT32_UNIT_ROUNDOFF * magnitude


FLOAT64_UNIT_ROUNDOFF = 2.0**-53


def float64_means_bound(n: int, magnitude: float = 1.0) -> float:
    """Bound on how far two float64 means of the same ``n`` numbers (each of absolute value <= ``magnitude``) can
    differ when they only sum in another order or grouping (e.g. a flat mean against a mean of row means).

    Recursive summation of n terms errs by at most (n - 1) u sum|x| <= n u n magnitude (Higham, Accuracy and
    Stability, 4.2); divided by n that is n u magnitude per mean, and two such means differ by at most twice that.
    """
    return 2 * n * FLOAT64_UNIT_ROUNDOFF * magnitude


def score_bound(logit_bound: float) -> float:
    """The largest score change a logit change of at most ``logit_bound`` can cause (sigmoid slope <= 1/4)."""
    return SIGMOID_MAX_SLOPE * logit_bound


def box_iou_lower_bound(xyxy: np.ndarray, error: float) -> np.ndarray:
    """Worst-case IoU of boxes ``xyxy`` [N, 4] with boxes whose every corner coordinate moved by at most ``error``.

    The worst case shrinks one box by ``error`` on each side and grows the other: IoU >= (w-2e)(h-2e)/((w+2e)(h+2e)).
    """
    w = np.maximum(xyxy[:, 2] - xyxy[:, 0], 0.0)
    h = np.maximum(xyxy[:, 3] - xyxy[:, 1], 0.0)
    inner = np.maximum(w - 2 * error, 0.0) * np.maximum(h - 2 * error, 0.0)
    outer = np.maximum((w + 2 * error) * (h + 2 * error), 1e-12)
    return inner / outer


def float64_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a float32 PyTorch model, the reference the float32 rounding error is measured against."""
    return copy.deepcopy(module).double().eval()


def export_outputs(module: torch.nn.Module, pixels: torch.Tensor) -> list[torch.Tensor]:
    """``forward_export`` (boxes, logits[, masks]) in the module's dtype, without gradients."""
    dtype = next(module.parameters()).dtype
    with torch.no_grad():
        return list(module.forward_export(pixels.to(dtype)))  # type: ignore[operator]


def rounding_error(module: torch.nn.Module, pixels: torch.Tensor) -> tuple[Tolerance, Tolerance]:
    """The float32 model's max abs deviation from its float64 copy on ``pixels``, and the outputs' max magnitudes.

    On the tiny test detector (64 px, randn pixels) this is boxes 5e-8, logits 1.4e-6, masks 2.7e-5; on the
    random-weight 432 px seg-preview model, logits 1.1e-5 on randn pixels but 0.30 on a random picture, where two of
    the 200 near-tied encoder proposals trade places (its detections' scores still agree to 2.15e-4).
    """
    ours = export_outputs(module, pixels)
    exact = export_outputs(float64_copy(module), pixels)
    err = [float((a.double() - b).abs().max()) for a, b in zip(ours, exact, strict=True)]
    mag = [float(b.abs().max()) for b in exact]
    err += [0.0] * (3 - len(err))
    mag += [0.0] * (3 - len(mag))
    return Tolerance(*err), Tolerance(*mag)


def float32_tolerance(module: torch.nn.Module, pixels: torch.Tensor, factor: float = FLOAT32_FACTOR) -> Tolerance:
    """Bounds on the raw outputs of another float32 path on ``pixels``: ``factor`` x :func:`rounding_error`, at least
    :data:`ULPS` ulps of each output's magnitude."""
    err, mag = rounding_error(module, pixels)
    return Tolerance(
        boxes=max(factor * err.boxes, ulp_floor(mag.boxes)),
        logits=max(factor * err.logits, ulp_floor(mag.logits)),
        masks=max(factor * err.masks, ulp_floor(mag.masks)),
    )


@dataclass(frozen=True)
class DetectionTolerance:
    """Bounds on a detection seen by two paths: score (abs), box corners (pixels), mask logits at image size."""

    score: float
    box: float
    mask_logit: float = 0.0


# INT8 files against float32, measured on the demo model over its 16 test images, for the float detections scoring
# > 0.5 (INT8 file's matched detection, mask logits resized to the image). Scores: see tests/deploy/test_int8.py (per
# format, with the NNCF settings the bounds must still reject). Mask logits, two demo models on the Zen 4 host:
# - the 160 px demo of session 7: OpenVINO's mask-logit error up to 2.92; pixels flip only where the float logit is
#   within 2.21 of 0; one detection's whole-mask IoU 0.71-0.85 (its float logits never exceed 4: the head was sure of
#   no pixel);
# - the 192 px demo with the pretrained head (session 8): errors up to 4.77 / 4.50 / 3.09 (OpenVINO / ONNX / TFLite),
#   pixels flip only where |float logit| <= 1.95 / 1.43 / 2.44, whole-mask IoU >= 0.957 / 0.917 / 0.941; score
#   changes above 0.6 at most 0.024 / 0.015 / 0.028 (OpenVINO's 0.106 is at a 0.59 detection, within threshold +
#   bound, which the check leaves out) (/work/tmp/tol/m_int8_final.py).
# 4.0 is ~1.6x the largest |logit| at which a pixel flipped: pixels whose float logit is larger in magnitude are the
# ones the float model is sure of, and only they enter the INT8 mask IoU.
# The registry states them (Int8Export.score_tolerance): one place for the numbers the export report judges by.
INT8_SCORE_BOUND = {name: fmt.int8.score_tolerance for name, fmt in FORMATS.items() if fmt.int8 is not None}
INT8_MASK_LOGIT_BOUND = 4.0


# Layers in sequence between the pixels and the loss of the tiny presets (`--size tiny` / `seg-tiny`) whose matmuls
# autocast runs in low precision: 4 ViT blocks x 2 (attention, MLP) + 2 projector convolutions + 2 decoder layers x 3
# (self-attention, deformable cross-attention, FFN) + 2 two-stage proposal layers + 3 box-MLP layers + up to 4
# mask-head layers = 25. Counting every layer of the longest path (the mask loss's) makes the bound an upper one.
TINY_AMP_DEPTH = 25


def amp_loss_rtol(unit_roundoff: float, depth: int = TINY_AMP_DEPTH, sigmas: float = 4.0) -> float:
    """Bound on the relative difference between a training loss under autocast and the float32 loss, same weights
    and batch.

    Autocast rounds both operands of each matmul / convolution to the low-precision format (relative error at most
    ``unit_roundoff`` each, uniformly distributed: standard deviation u / sqrt(3)) and accumulates in float32, whose
    own error is 2^16 (bf16) or 2^13 (fp16) times smaller and left out. Normalisation and residual connections keep
    each layer's relative gain near 1, so the output's relative error is the sum of the ``2 * depth`` roundings along
    the path; the loss (a positive weighted sum of terms Lipschitz in the outputs with relative gain <= 1) inherits
    it. Independent random-sign roundings add as sqrt(n) (Higham and Mary's probabilistic bound, as in
    :func:`reordered_sum_bound`); ``sigmas`` standard deviations: ``sigmas * sqrt(2 * depth) * u / sqrt(3)``.
    The worst case (all roundings the same sign, 2 * depth * u) is 2.2x larger at depth 25.

    At depth 25 this is 0.064 for bf16 and 0.0080 for fp16. Measured on the Zen 4 host (AVX-512 BF16; first
    optimizer step of each training mode, tests/train/test_amp.py): at most 2.4e-3 (bf16, single stage; 1.0e-2 with
    stage 2's MaskHead) and 2.1e-3 (fp16, single stage) -- 0.6 (2.6) and 4.3 unit roundoffs. Not covered: a
    Hungarian match that flips between two near-tied queries (a discontinuity, not rounding); the tiny batches here
    show none.
    """
    return sigmas * math.sqrt(2 * depth) * unit_roundoff / math.sqrt(3)
