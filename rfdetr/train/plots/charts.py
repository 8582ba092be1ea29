"""The run folder's matplotlib figures, each returned as PNG bytes (the caller writes them atomically).

matplotlib is imported on first use, with the non-interactive Agg backend, so that importing the training code never
needs it and no figure ever opens a window.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rfdetr.train.plots.analysis import PrCurves, ScoreCurves

__all__ = ["confusion_png", "f1_png", "labels_png", "pr_png", "results_png"]

# Panel titles that say more than the log key.
_TITLES = {"loss": "loss (weighted total)", "class_error": "class error (%)", "lr": "learning rate",
           "bbox_mAP": "bbox mAP50:95", "segm_mAP": "segm mAP50:95"}
# Classes drawn one line each, with a legend, up to this count; beyond it they are thin grey lines without legend.
_LEGEND_CLASSES = 12
_DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display, no window; keeps a backend the user already chose for files
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    plt.close(fig)
    return buffer.getvalue()


def _note(ax: Any, text: str) -> None:
    """A centred grey note on an empty axis, so that an empty plot says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=10, wrap=True)


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def results_png(columns: dict[str, list[float | None]], title: str = "") -> bytes:
    """One panel per logged quantity against the epoch, train / val / EMA val overlaid (``results.png``).

    Args:
        columns: ``results.csv``'s columns: ``epoch`` and every ``train_*``, ``val_*``, ``ema_val_*`` value (None
            where an epoch did not log it, e.g. not evaluated).
        title: figure title (the run folder's name).
    """
    plt = _pyplot()
    epochs = np.array(columns["epoch"], dtype=np.float64)
    panels: dict[str, list[tuple[str, str]]] = {}  # quantity -> [(series label, column)]
    for name in columns:
        for prefix, label in (("ema_val_", "EMA val"), ("val_", "val"), ("train_", "train")):
            if name.startswith(prefix):
                panels.setdefault(name[len(prefix):], []).append((label, name))
                break
    skip = {"epoch_time", "skipped_steps"}  # in results.csv; not a loss or metric
    order = sorted((q for q in panels if q not in skip), key=lambda q: (not q.startswith("loss"), "mAP" in q, q))
    count = max(1, len(order))
    cols = min(5, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    styles = {"train": ("C0", "-"), "val": ("C1", "-"), "EMA val": ("C2", "--")}
    handles: dict[str, Any] = {}
    for ax, quantity in zip(axes.flat, order, strict=False):
        for label, column in panels[quantity]:
            values = np.array([np.nan if v is None else v for v in columns[column]], dtype=np.float64)
            mask = np.isfinite(values)
            if not mask.any():
                continue
            color, line = styles[label]
            # Markers when few points are logged (or evaluation skips epochs), so that a lone value still shows.
            marker = "o" if mask.sum() <= 15 or not mask.all() else None
            (handles[label],) = ax.plot(epochs[mask], values[mask], line, color=color, marker=marker, markersize=3,
                                        linewidth=1.4, label=label)
        ax.set_title(_TITLES.get(quantity, quantity.replace("_", " ")), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.yaxis.get_offset_text().set_fontsize(7)
        if quantity == "lr":
            ax.set_ylim(bottom=0)  # a constant LR would otherwise fill the panel with a +-4% scale
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if not ax.get_lines():
            _note(ax, "not logged yet")
    for ax in list(axes.flat)[len(order):]:
        ax.axis("off")
    if not order:
        _note(axes.flat[0], "no epoch logged yet")
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    # One legend for every panel, in the title row, so that no legend covers a curve.
    order_labels = [k for k in styles if k in handles]
    if order_labels:
        fig.legend([handles[k] for k in order_labels], order_labels, loc="upper right", ncol=len(order_labels),
                   fontsize=8, frameon=False)
    # Fixed margins: tight_layout measures every text and costs more than the drawing itself on a 15-panel figure.
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.5 / fig.get_figheight(), top=1 - 0.55 / fig.get_figheight(),
                        wspace=0.28, hspace=0.45)
    return _png(fig)


def _class_lines(ax: Any, x: np.ndarray, per_class: np.ndarray, valid: np.ndarray, class_names: Sequence[str],
                 value: Any) -> None:
    """Per-class lines: labelled (with ``value(k)``) up to :data:`_LEGEND_CLASSES` valid classes, else thin grey."""
    indices = [k for k in range(len(class_names)) if valid[k]]
    labelled = len(indices) <= _LEGEND_CLASSES
    for k in indices:
        if labelled:
            ax.plot(x, per_class[k], linewidth=1, alpha=0.8, label=f"{_short(class_names[k])} {value(k):.3f}")
        else:
            ax.plot(x, per_class[k], linewidth=0.6, color="0.6", alpha=0.6)


def _finish_curve(ax: Any, fig: Any, xlabel: str, ylabel: str, title: str, empty: str | None) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if empty:
        _note(ax, empty)
    else:
        # Outside the axes, so that the legend never hides a curve.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()


def pr_png(pr: PrCurves, class_names: Sequence[str], title: str) -> bytes:
    """Precision against recall at IoU 0.5 (``pr_curve_box.png`` / ``pr_curve_mask.png``): one line per class with
    its AP50, and the all-classes mean (whose mean over the recall points is the AP50 the evaluator reports)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    empty = None
    if pr.valid.any():
        _class_lines(ax, pr.recall, pr.precision, pr.valid, class_names, lambda k: pr.ap50[k])
        ax.plot(pr.recall, pr.mean, color="C0" if len(class_names) == 1 else "black", linewidth=2.5,
                label=f"all classes AP50 {float(pr.mean.mean()):.3f}")
    else:
        empty = "no ground truth in the evaluated images"
    _finish_curve(ax, fig, "recall", "precision", title, empty)
    return _png(fig)


def f1_png(curves: ScoreCurves, class_names: Sequence[str], title: str) -> bytes:
    """F1 at IoU 0.5 against the score threshold (``f1_curve_box.png`` / ``f1_curve_mask.png``), with the threshold
    that maximises the all-classes F1 marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    empty = None
    if curves.valid.any():
        best = curves.best
        _class_lines(ax, curves.thresholds, curves.f1, curves.valid, class_names, lambda k: curves.f1[k, best])
        ax.plot(curves.thresholds, curves.f1_mean, color="black", linewidth=2.5,
                label=f"all classes {curves.f1_mean[best]:.3f} at {curves.threshold:.3f}")
        ax.axvline(curves.threshold, color="0.3", linestyle=":", linewidth=1)
        if curves.f1_mean[best] == 0:
            empty = "no true positive at any threshold yet"
    else:
        empty = "no ground truth in the evaluated images"
    _finish_curve(ax, fig, "score threshold", "F1", title, empty)
    return _png(fig)


def confusion_png(matrix: np.ndarray, class_names: Sequence[str], title: str) -> bytes:
    """The confusion matrix normalised per true class (each column sums to 1), background last
    (``confusion_matrix.png``)."""
    plt = _pyplot()
    names = [_short(n, 16) for n in class_names] + ["background"]
    n = len(names)
    totals = matrix.sum(axis=0, keepdims=True)
    normalised = np.where(totals > 0, matrix / np.maximum(totals, 1), np.nan)
    side = min(14.0, max(5.0, 0.5 * n + 3))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    labelled = n <= 30
    ax.set_xticks(range(n), names if labelled else [""] * n, rotation=45 if n > 6 else 0, ha="right" if n > 6 else
                  "center", fontsize=8)
    ax.set_yticks(range(n), names if labelled else [""] * n, fontsize=8)
    if n <= 20:  # the numbers stay readable up to about this many cells per row
        for (i, j), value in np.ndenumerate(normalised):
            if matrix[i, j] and np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.6 else "black")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    if not matrix.any():
        _note(ax, "no ground truth and no detection")
    fig.tight_layout()
    return _png(fig)


def labels_png(labels: np.ndarray, centres: np.ndarray, sizes: np.ndarray, class_names: Sequence[str],
               title: str) -> bytes:
    """The training split's labels (``labels.png``): instances per class, box centres and box sizes.

    Args:
        labels: [N] class of every instance.
        centres: [N, 2] box centres as fractions of the image's width and height.
        sizes: [N, 2] box widths and heights as fractions of the image's.
        class_names: K names.
        title: figure title.
    """
    plt = _pyplot()
    k = len(class_names)
    fig, axes = plt.subplots(1, 3, figsize=(max(13.0, 0.35 * k + 9), 4.2),
                             gridspec_kw={"width_ratios": [max(1.2, 0.1 * k), 1, 1]})
    counts = np.bincount(labels, minlength=k) if len(labels) else np.zeros(k, dtype=np.int64)
    ax = axes[0]
    ax.bar(range(k), counts, color=[tuple(c / 255 for c in _rgb(i)) for i in range(k)])
    ax.set_xticks(range(k), [_short(n) for n in class_names] if k <= 40 else [""] * k,
                  rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center", fontsize=8)
    ax.set_ylabel("instances")
    ax.set_title("instances per class", fontsize=10)
    if k <= 20:
        for i, c in enumerate(counts):
            ax.text(i, c, str(int(c)), ha="center", va="bottom", fontsize=7)
    for ax, values, name, (xl, yl) in ((axes[1], centres, "box centres", ("x", "y")),
                                      (axes[2], sizes, "box sizes", ("width", "height"))):
        if len(values):
            ax.hist2d(values[:, 0], values[:, 1], bins=40, range=[[0, 1], [0, 1]], cmap="Blues", cmin=1)
        else:
            _note(ax, "no box in the training split")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        if name == "box centres":
            ax.invert_yaxis()  # image coordinates: y grows downwards
        ax.set_aspect("equal")
        ax.set_xlabel(f"{xl} (fraction of the image)", fontsize=8)
        ax.set_ylabel(f"{yl} (fraction of the image)", fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _rgb(class_id: int) -> tuple[int, int, int]:
    from rfdetr.util.drawing import class_color

    return class_color(class_id)
