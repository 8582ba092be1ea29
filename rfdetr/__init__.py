"""RT-DETR-Seg: RF-DETR detection and two-stage instance segmentation.

The user-facing classes (``RFDETRNano``, ``RFDETRSegNano``, ``RFDETR`` ...) live in :mod:`rfdetr.detr` and are
re-exported here lazily, so that ``import rfdetr.config`` stays cheap and nothing happens at import time.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy re-export: importing torch and the model code only when a model class is asked for.
    if name.startswith("RFDETR") or name == "Detections":
        from rfdetr import detr

        return getattr(detr, name)
    raise AttributeError(f"module 'rfdetr' has no attribute {name!r}")
