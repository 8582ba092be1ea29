"""Running a model or an exported file and getting the same result type from either.

* :mod:`~rfdetr.deploy.runtime.detections`: :class:`~rfdetr.deploy.runtime.detections.Detections`;
* :mod:`~rfdetr.deploy.runtime.processing`: the pre- and post-processing every runner shares;
* :mod:`~rfdetr.deploy.runtime.runner`: :class:`~rfdetr.deploy.runtime.runner.ExportedModel` /
  :func:`~rfdetr.deploy.runtime.runner.load`: any exported file, ``predict()`` like the PyTorch model;
* :mod:`~rfdetr.deploy.runtime.optimize`: ``optimize_for_inference``, an export built once, cached and reused;
* :mod:`~rfdetr.deploy.runtime.auto`: ``engine="auto"``'s timing of each engine on this host, and its cached pick;
* :mod:`~rfdetr.deploy.runtime.engine_args`: the ``--engine --int8 --calibration --threads`` flags of predict and
  evaluate;
* :mod:`~rfdetr.deploy.runtime.evaluate`: COCO bbox / segm evaluation of anything with ``predict``;
* :mod:`~rfdetr.deploy.runtime.timing`: per-stage timing of ``predict()`` and of the video loop.
"""
