"""The run folder's pictures and tables (results.png / .csv, PR and F1 curves, confusion matrix, per-class table,
labels, training batches, validation predictions): see :mod:`rfdetr.train.plots.run_plots`."""

from rfdetr.train.plots.run_plots import RunPlots

__all__ = ["RunPlots"]
