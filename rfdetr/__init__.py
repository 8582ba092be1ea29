"""RT-DETR-Seg: RF-DETR detection and two-stage instance segmentation.

The user-facing classes (``RFDETRNano``, ``RFDETRSegNano``, ``RFDETR`` ...) live in :mod:`rfdetr.detr` and
:class:`Detections` in :mod:`rfdetr.deploy.runtime.detections`; both are re-exported here lazily, so that
``import rfdetr.config`` stays cheap and importing the package builds nothing.

Layout: ``models/``, ``losses/``, ``data/`` (the network, its losses, COCO data and evaluation), ``checkpoint/``
(files, weights, surgery), ``train/`` (the three stages), ``deploy/`` (export formats, runners, predict), ``util/``;
``config.py`` (model presets) and ``detr.py`` (the user API); ``demo``, ``export``, ``predict`` and ``evaluate`` are
the ``python -m rfdetr.<command>`` entry points. Module paths from before this layout still import, with a
``DeprecationWarning`` naming the new one (:mod:`rfdetr.util.moved`).
"""

from __future__ import annotations

from rfdetr.util import moved as _moved
from rfdetr.version import __version__

__all__ = ["__version__"]

_moved.install()


def __getattr__(name: str) -> object:
    # Lazy re-export: importing torch and the model code only when a model class is asked for. (No ``typing`` import
    # here: it alone would double the time of ``import rfdetr``.)
    if name == "Detections":
        from rfdetr.deploy.runtime.detections import Detections

        return Detections
    if name.startswith("RFDETR"):
        from rfdetr import detr

        return getattr(detr, name)
    raise AttributeError(f"module 'rfdetr' has no attribute {name!r}")
