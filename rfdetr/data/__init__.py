"""Data: COCO and YOLO datasets and their checks, transforms and loaders, mask encodings, synthetic data, COCO
evaluation.

* :mod:`~rfdetr.data.coco` (``CocoDetection``: the Roboflow COCO layout or a YOLO dataset),
  :mod:`~rfdetr.data.annotations` (finding the format, reading and checking the JSON), :mod:`~rfdetr.data.yolo` (YOLO
  datasets as an in-memory COCO dict), :mod:`~rfdetr.data.image_io`, :mod:`~rfdetr.data.masks` (polygons and RLE).
* :mod:`~rfdetr.data.transforms` (``torchvision.transforms.v2`` pipelines) and :mod:`~rfdetr.data.loaders`.
* :mod:`~rfdetr.data.validate` and :mod:`~rfdetr.data.validate_yolo` (``validate_setup.py``'s dataset checks) and
  :mod:`~rfdetr.data.synthetic` (the demo's and the tests' shapes dataset).
* :mod:`~rfdetr.data.coco_eval`: COCO bbox / segm evaluation of predictions (training, ``python -m rfdetr.evaluate``).
"""
