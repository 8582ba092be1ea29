"""Deployment: export to every format, run exported files, predict and draw.

* :mod:`~rfdetr.deploy.formats`: the export formats as data (one module each, imported only when used).
* :mod:`~rfdetr.deploy.graph`: the inference graph every format traces.
* :mod:`~rfdetr.deploy.runner`: run an exported file and get the same :class:`Detections` as ``predict()``.
* :mod:`~rfdetr.deploy.processing`: the pre- and post-processing every runner shares.
* :mod:`~rfdetr.deploy.detections`: :class:`Detections`, the result of a prediction.
* :mod:`~rfdetr.deploy.predict`: predict over image files and write pictures and COCO JSON;
  :mod:`~rfdetr.deploy.visualize`: drawing.
* :mod:`~rfdetr.deploy.sources`: what ``--source`` names, and frames of videos, cameras and streams;
  :mod:`~rfdetr.deploy.video`: the video loop and its writers; :mod:`~rfdetr.deploy.track`: ByteTrack;
  :mod:`~rfdetr.deploy.timing`: per-stage timing of ``predict()`` and the loop.

Nothing here imports the training code or the user API (:mod:`rfdetr.detr` imports this package).
"""

from rfdetr.deploy.runner import ExportedModel, load

__all__ = ["ExportedModel", "load"]
