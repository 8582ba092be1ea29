"""``optimize_for_inference``'s engines: a traced PyTorch copy, or an exported file run in a faster runtime.

``engine="auto"`` on a CPU exports the model once to the fastest runtime installed (:data:`AUTO_ORDER`, from
``bench/bench_deploy.py``), caches the file beside the weights under a key of the weights' hash and the settings, and
``predict()`` then runs the network there with its usual pre- and post-processing. With no runtime installed it stays
in PyTorch and says so in one log line.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfdetr.deploy.export.exporter import default_file_name
from rfdetr.deploy.export.formats import FORMATS
from rfdetr.deploy.export.graph import ExportForward
from rfdetr.deploy.runtime.runner import ExportedModel

__all__ = [
    "AUTO_ORDER", "ENGINES", "cached_engine", "default_cache_dir", "pick_engine", "trace_torch", "weights_key",
]

logger = logging.getLogger(__name__)

# Engine name -> export format.
ENGINES: dict[str, str] = {"onnxruntime": "onnx", "openvino": "openvino", "tflite": "tflite"}
# Fastest first, as measured by bench/bench_deploy.py on an x86 CPU (README, "Deploy").
AUTO_ORDER: tuple[str, ...] = ("openvino", "onnxruntime", "tflite")


def trace_torch(model: nn.Module, masks: bool, dtype: torch.dtype, batch_size: int, resolution: int,
                device: torch.device, compile: bool = True) -> nn.Module:
    """An eval-only copy of ``model``'s single-group export graph in ``dtype``, traced with ``torch.jit.trace`` at
    ``batch_size`` x 3 x R x R when ``compile``."""
    module: nn.Module = ExportForward(copy.deepcopy(model), masks).eval().to(dtype)
    for param in module.parameters():
        param.requires_grad_(False)
    if compile:
        example = torch.zeros(batch_size, 3, resolution, resolution, device=device, dtype=dtype)
        # The shape checks in the graph become constants at the traced size, which is the point; the tracer's
        # warnings about them would only alarm users.
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            module = torch.jit.trace(module, example, check_trace=False)
    return module


def pick_engine(engine: str, device: torch.device) -> str | None:
    """The runtime engine to use, or ``None`` for PyTorch.

    Raises:
        ValueError: an unknown engine name.
        ImportError: a named engine whose packages are missing (the message gives the pip command).
    """
    if engine == "torch":
        return None
    if engine == "auto":
        if device.type != "cpu":
            return None  # on a GPU the PyTorch model is the fast path
        for name in AUTO_ORDER:
            fmt = FORMATS.get(ENGINES[name])
            if fmt is not None and not fmt.missing() and not fmt.missing(fmt.runtime):
                return name
        logger.info("optimize_for_inference(engine='auto'): no export runtime is installed (onnxruntime, openvino, "
                    "ai-edge-litert); predicting with PyTorch")
        return None
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose auto, torch, {', '.join(ENGINES)}")
    fmt = FORMATS.get(ENGINES[engine])
    if fmt is None:
        raise ValueError(f"engine {engine!r} needs the {ENGINES[engine]} export format, which is not available")
    fmt.require()
    return engine


def default_cache_dir(weights_path: Path | None) -> Path:
    """``.rfdetr_optimized/`` beside the weights file, or in the user cache for a model without one."""
    if weights_path is not None:
        return Path(weights_path).parent / ".rfdetr_optimized"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rfdetr" / "optimized"


def weights_key(model: nn.Module, settings: Mapping[str, Any]) -> str:
    """A short hash of every tensor of ``model`` and of the export ``settings``: the cache key of its file."""
    digest = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cached_engine(model: nn.Module, engine: str, cache_dir: str | os.PathLike[str], settings: Mapping[str, Any],
                  export: Callable[[Path, str], Path], threads: int | None = None) -> ExportedModel:
    """The model's file for ``engine`` from the cache, exported first when missing.

    Args:
        model: the network (hashed with ``settings`` for the key).
        engine: a name of :data:`ENGINES`.
        cache_dir: folder of the cached files (created).
        settings: what else decides the file (resolution, masks, int8, calibration ...).
        export: ``export(folder, file_name) -> path`` writes the file.
        threads: runtime threads.
    """
    fmt = ENGINES[engine]
    key = weights_key(model, {"engine": engine, **settings})
    folder = Path(cache_dir) / f"{engine}_{key}"
    name = default_file_name(fmt, int8=bool(settings.get("int8")))
    path = folder / name
    if path.is_file():
        logger.info("optimize_for_inference: using the cached %s file %s", engine, path)
    else:
        logger.info("optimize_for_inference: exporting to %s (once; cached in %s)", engine, folder)
        path = export(folder, name)
    return ExportedModel(path, threads)
