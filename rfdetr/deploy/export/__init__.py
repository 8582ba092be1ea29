"""Making a deployable file: every export format, the graph they trace, INT8, and the report written beside the file.

* :mod:`~rfdetr.deploy.export.formats`: the registry (each format's module, suffix, packages, and what it offers:
  float16 weights, INT8 and how, integer I/O) and one module per format (``onnx``, ``openvino``, ``tflite`` with
  ``tflite_int8`` and their shared ``litert``, ``executorch``), imported only when used;
* :mod:`~rfdetr.deploy.export.graph`: :class:`~rfdetr.deploy.export.graph.ExportForward`, the single-group inference
  graph every format traces, and the input / output names every file carries;
* :mod:`~rfdetr.deploy.export.metadata`: what a file says about itself (class names, resolution, mean, std ...);
* :mod:`~rfdetr.deploy.export.int8`: INT8's shared vocabulary (I/O types, the groups kept float, node groups);
  :mod:`~rfdetr.deploy.export.calibration`: calibration images; :mod:`~rfdetr.deploy.export.sensitivity`: the
  per-layer INT8 study;
* :mod:`~rfdetr.deploy.export.report`: ``<file>.report.json``; :mod:`~rfdetr.deploy.export.exporter`:
  :func:`~rfdetr.deploy.export.exporter.export_model`, behind ``RFDETR.export`` and ``python -m rfdetr.export``.
"""
