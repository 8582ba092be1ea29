"""What an exported file says about itself: class names, resolution, mean and std, and how to read them back.

Every format stores the same string entries (:func:`export_metadata`); values that are not plain strings are JSON. A
format that can carry them inside the file does (ONNX ``metadata_props``, OpenVINO ``rt_info``); the others write
them to a JSON file beside it (:func:`sidecar_path`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rfdetr.util.run_dir import write_json_atomic
from rfdetr.version import __version__

__all__ = ["decode_metadata", "export_metadata", "read_sidecar", "sidecar_path", "write_sidecar"]

PREPROCESSING = ("RGB / 255, bilinear resize to resolution x resolution without antialias, (x - mean) / std, "
                 "NCHW float32")


def export_metadata(model_name: str, class_names: Sequence[str], resolution: int, mean: Sequence[float],
                    std: Sequence[float], num_select: int, masks: bool, **extra: Any) -> dict[str, str]:
    """The string entries every exported file carries.

    Args:
        model_name: the model's class (``RFDETRSegNano`` ...).
        class_names: names indexed by class id (one per logit).
        resolution: square input side R.
        mean, std: the normalisation the input expects.
        num_select: top-k of the post-processing.
        masks: whether the file has a mask output.
        **extra: more entries (``format``, ``precision`` ...), JSON-encoded unless strings.
    """
    entries: dict[str, Any] = {
        "producer": f"rt-detr-seg {__version__}", "model_name": model_name, "class_names": list(class_names),
        "num_logits": len(class_names), "resolution": resolution, "mean": list(mean), "std": list(std),
        "num_select": num_select, "masks": bool(masks), "preprocessing": PREPROCESSING, **extra,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in entries.items()}


def decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """String metadata -> Python values (JSON where it parses, the string otherwise)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
    return out


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where a format without embedded metadata keeps it: ``model.tflite`` -> ``model.tflite.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_sidecar(path: str | os.PathLike[str], metadata: Mapping[str, str]) -> Path:
    """Write the metadata of ``path`` beside it (atomically)."""
    return write_json_atomic(sidecar_path(path), dict(metadata))


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata beside ``path``.

    Raises:
        ValueError: the JSON is missing or unreadable (the message names it and says how to get it back).
    """
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text())
    except FileNotFoundError:
        raise ValueError(f"{os.fspath(path)}: its metadata file {side} is missing (class names, resolution, mean and "
                         "std live there); keep it beside the model, or export again") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{side}: cannot read the model's metadata: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{side}: expected a JSON object of metadata, got {type(data).__name__}")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
