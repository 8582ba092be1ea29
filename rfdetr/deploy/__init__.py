"""Deployment, in three jobs: make a file (:mod:`~rfdetr.deploy.export`), run it
(:mod:`~rfdetr.deploy.runtime`), and turn images and videos into pictures and results (:mod:`~rfdetr.deploy.media`).

* :mod:`rfdetr.deploy.export`: the export formats as data and their modules, the traced graph, metadata, calibration,
  INT8 and its per-layer sensitivity, the export report, :func:`~rfdetr.deploy.export.exporter.export_model`;
* :mod:`rfdetr.deploy.runtime`: :class:`~rfdetr.deploy.runtime.detections.Detections`, the pre- and post-processing
  every runner shares, running any exported file like ``predict()``, the cached fast path
  (:func:`~rfdetr.deploy.runtime.optimize.optimize_for_inference`), COCO evaluation of any predictor, stage timing;
* :mod:`rfdetr.deploy.media`: predict over image files, videos, cameras and streams, drawing, tracking.

Imports run export / runtime -> media never (media uses both), and nothing here imports the training code or the
user API (:mod:`rfdetr.detr` imports this package). Module paths from before this grouping (``rfdetr.deploy.runner``
...) still import, with a ``DeprecationWarning`` (:mod:`rfdetr.util.moved`).
"""

from rfdetr.deploy.runtime.runner import ExportedModel, load

__all__ = ["ExportedModel", "load"]
