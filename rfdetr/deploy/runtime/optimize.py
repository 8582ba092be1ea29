"""``optimize_for_inference``'s engines: a traced PyTorch copy, or an exported file run in a faster runtime.

:func:`optimize_model` is the one implementation behind ``RFDETR.optimize_for_inference`` and the command lines'
``--engine`` (:mod:`rfdetr.deploy.runtime.engine_args`). A runtime engine's file is exported once, cached beside the
weights under a key of the weights' hash and the settings (:func:`cached_engine`), and ``predict()`` then runs the
network there with its usual pre- and post-processing. ``engine="auto"`` on a CPU measures every installed candidate
on this host and picks the fastest (:mod:`rfdetr.deploy.runtime.auto`), remembering the pick; on a GPU it stays in
PyTorch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rfdetr.deploy.export.exporter import default_file_name
from rfdetr.deploy.export.formats import FORMATS, MissingPackageError
from rfdetr.deploy.export.graph import ExportForward
from rfdetr.deploy.runtime.auto import REPEATS, decision_path, host_key, measure, read_decision, write_decision
from rfdetr.deploy.runtime.runner import ExportedModel

__all__ = [
    "AUTO_ORDER", "ENGINES", "ENGINE_CHOICES", "cached_engine", "default_cache_dir", "engine_missing",
    "optimize_model", "pick_engine", "state_digest", "trace_torch", "weights_key",
]

logger = logging.getLogger(__name__)

# Engine name -> export format (the one place the engines are listed; the command lines' choices come from here).
ENGINES: dict[str, str] = {"onnxruntime": "onnx", "openvino": "openvino", "tflite": "tflite"}
ENGINE_CHOICES: tuple[str, ...] = ("auto", "torch", *ENGINES)
# The order ``auto`` measures its candidates in, and prefers them in on equal times. Which is fastest is measured on
# each host (:mod:`rfdetr.deploy.runtime.auto`), never read from this order.
AUTO_ORDER: tuple[str, ...] = ("openvino", "onnxruntime", "tflite")

# ``export(engine, folder, file_name) -> path`` writes an engine's file (RFDETR.export with the settings bound).
ExportFn = Callable[[str, Path, str], Path]


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
            # torch 2.14 deprecates jit.trace (NOTES: move to torch.export); the user can do nothing about it.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
            module = torch.jit.trace(module, example, check_trace=False)
    return module


def engine_missing(engine: str, int8: bool = False) -> list[str]:
    """Import names an engine needs (to export, with ``int8`` an INT8 file, and to run) that are not installed."""
    fmt = FORMATS.get(ENGINES[engine])
    if fmt is None:
        return [ENGINES[engine]]
    extra = fmt.int8.packages if int8 and fmt.int8 is not None else ()
    return fmt.missing(list(dict.fromkeys((*fmt.packages, *fmt.runtime, *extra))))


def _install(engine: str) -> str:
    fmt = FORMATS.get(ENGINES[engine])
    return fmt.install if fmt is not None else f"the {ENGINES[engine]} export format is not available"


def pick_engine(engine: str, device: torch.device, int8: bool = False, fallback: bool = False) -> str | None:
    """The engine to use: a name of :data:`ENGINES`, ``"auto"`` (measure on this CPU), or ``None`` for PyTorch.

    Args:
        engine: one of :data:`ENGINE_CHOICES`.
        device: the model's device (``auto`` on a GPU is PyTorch, the fast path there).
        int8: an INT8 file is asked for (its quantizer's packages are needed too).
        fallback: a named engine whose packages are missing gives PyTorch with one warning line (the pip command)
            instead of raising.

    Raises:
        ValueError: an unknown engine name.
        MissingPackageError: (an ImportError) a named engine's packages are missing and not ``fallback``.
    """
    if engine not in ENGINE_CHOICES:
        raise ValueError(f"unknown engine {engine!r}; choose {', '.join(ENGINE_CHOICES)}")
    if engine == "torch":
        return None
    if engine == "auto":
        return "auto" if device.type == "cpu" else None
    missing = engine_missing(engine, int8)
    if not missing:
        return engine
    message = (f"engine {engine}{' INT8' if int8 else ''} needs {', '.join(missing)}, which is not installed: "
               f"{_install(engine)}")
    if not fallback:
        raise MissingPackageError(message)
    logger.warning("%s; running PyTorch float32 instead", message)
    return None


def default_cache_dir(weights_path: Path | None) -> Path:
    """``.rfdetr_optimized/`` beside the weights file, or in the user cache for a model without one."""
    if weights_path is not None:
        return Path(weights_path).parent / ".rfdetr_optimized"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rfdetr" / "optimized"


def state_digest(model: nn.Module) -> str:
    """SHA-256 of every tensor of ``model`` (names and bytes): what its cached files are keyed by."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_key(model: nn.Module, settings: Mapping[str, Any], digest: str | None = None) -> str:
    """A short hash of every tensor of ``model`` (or its :func:`state_digest` ``digest``) and of the export
    ``settings``: the cache key of its file."""
    key = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    key.update((digest if digest is not None else state_digest(model)).encode())
    return key.hexdigest()[:16]


def cached_engine(model: nn.Module, engine: str, cache_dir: str | os.PathLike[str], settings: Mapping[str, Any],
                  export: Callable[[Path, str], Path], threads: int | None = None,
                  digest: str | None = None) -> ExportedModel:
    """The model's file for ``engine`` from the cache, exported first when missing (its time logged).

    Args:
        model: the network (hashed with ``settings`` for the key).
        engine: a name of :data:`ENGINES`.
        cache_dir: folder of the cached files (created).
        settings: what else decides the file (resolution, masks, int8, calibration ...).
        export: ``export(folder, file_name) -> path`` writes the file.
        threads: runtime threads.
        digest: ``model``'s :func:`state_digest` when already computed.
    """
    fmt = ENGINES[engine]
    key = weights_key(model, {"engine": engine, **settings}, digest)
    folder = Path(cache_dir) / f"{engine}_{key}"
    name = default_file_name(fmt, int8=bool(settings.get("int8")))
    path = folder / name
    if path.is_file():
        logger.info("engine %s: using the cached file %s (built earlier for these weights and settings)", engine,
                    path)
    else:
        logger.info("engine %s: exporting once to %s (cached for these weights and settings)", engine, folder)
        start = time.perf_counter()
        path = export(folder, name)
        logger.info("engine %s: exported in %.1f s: %s", engine, time.perf_counter() - start, path)
    return ExportedModel(path, threads)


def _times(ms: Mapping[str, float]) -> str:
    """``onnxruntime 1.0 ms, torch 1.9 ms``: fastest first."""
    return ", ".join(f"{e} {t:.1f} ms" for e, t in sorted(ms.items(), key=lambda item: item[1]))


def _auto(model: nn.Module, settings: Mapping[str, Any], folder: Path, export: ExportFn, threads: int | None,
          build_torch: Callable[[], nn.Module] | None) -> nn.Module | ExportedModel | None:
    """``engine="auto"`` on a CPU: every installed candidate built (or reused) and timed, the fastest returned; the
    decision read from / written to its JSON so that the next call neither exports nor measures. ``build_torch``:
    PyTorch's candidate (None with INT8, which PyTorch does not run). None: no runtime installed and no PyTorch
    candidate."""
    int8 = bool(settings.get("int8"))
    missing = {e: engine_missing(e, int8) for e in AUTO_ORDER}
    candidates = [e for e in AUTO_ORDER if not missing[e]] + (["torch"] if build_torch is not None else [])
    absent = "; ".join(f"{e} not installed ({_install(e)})" for e in AUTO_ORDER if missing[e])
    if not [c for c in candidates if c != "torch"]:
        logger.warning("engine auto: no export runtime is installed%s; running PyTorch float32",
                       f" ({absent})" if absent else "")
        return None
    digest = state_digest(model)
    host = host_key(threads)
    decision_file = decision_path(folder, digest, settings, host, candidates)
    decision = read_decision(decision_file, candidates)
    if decision is not None:
        chosen = decision["engine"]
        times = _times(decision.get("ms", {}))
        logger.info("engine auto: %s (%s; measured once on this host, cached in %s)", chosen, times, decision_file)
        return build_torch() if chosen == "torch" else cached_engine(  # type: ignore[misc]
            model, chosen, folder, settings, lambda where, name: export(chosen, where, name), threads, digest)
    batch, resolution = int(settings["batch"]), int(settings["resolution"])
    pixels = torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    built: dict[str, nn.Module | ExportedModel] = {}
    for name in candidates:
        if name == "torch":
            built[name] = build_torch()  # type: ignore[misc]
            continue
        try:
            built[name] = cached_engine(model, name, folder, settings,
                                        lambda where, file, name=name: export(name, where, file), threads, digest)
        except (ImportError, ValueError, RuntimeError) as err:  # one runtime failing leaves the others to pick from
            logger.warning("engine auto: %s left out: %s", name, err)
    if not built:
        raise RuntimeError("engine auto: no candidate engine could be built (see the warnings above)")
    forwards = {name: b.run if isinstance(b, ExportedModel) else b for name, b in built.items()}
    ms = measure(forwards, pixels, threads)
    chosen = min(ms, key=lambda e: (ms[e], candidates.index(e)))
    write_decision(decision_file, chosen, ms, host, settings, list(pixels.shape))
    logger.info("engine auto: picked %s, the fastest on this host (median of %d forwards at %s, threads %s: %s)%s; "
                "decision cached in %s", chosen, REPEATS, "x".join(map(str, pixels.shape)), threads or "default",
                _times(ms), f"; {absent}" if absent else "", decision_file)
    return built[chosen]


def optimize_model(
    model: nn.Module,
    engine: str,
    device: torch.device,
    *,
    masks: bool,
    resolution: int,
    export: ExportFn,
    weights_path: Path | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 1,
    compile: bool = True,
    int8: bool = False,
    calibration: str | os.PathLike[str] | None = None,
    calibration_images: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    fallback: bool = False,
) -> nn.Module | ExportedModel:
    """The faster copy of ``model`` that :meth:`rfdetr.detr.RFDETR.optimize_for_inference` installs (see there).

    Returns:
        A traced (or, without ``compile``, eager) PyTorch copy of the export graph, or the engine's cached file in
        its runtime.

    Raises:
        ValueError: unknown engine; ``int8`` without ``calibration`` or with PyTorch (unless ``fallback`` brought
            PyTorch in for a missing runtime, which the warning says).
        MissingPackageError: a named engine's packages are missing and not ``fallback``.
    """
    chosen = pick_engine(engine, device, int8, fallback)

    def build_torch() -> nn.Module:
        return trace_torch(model, masks, dtype, batch_size, resolution, device, compile)

    if int8 and calibration is None and chosen is not None:
        raise ValueError("int8 needs calibration images: calibration=DIR (a dataset folder or a folder of images)")
    if chosen is None:
        if int8 and engine == "torch":
            raise ValueError("int8 needs an export runtime (engine='auto', 'onnxruntime', 'openvino' or 'tflite'); "
                             "PyTorch runs float32")
        if int8 and engine == "auto":  # on a GPU (the fallback's own warning says it for a missing runtime)
            logger.warning("engine auto on %s: PyTorch float32 (the INT8 engines run on the CPU)", device)
        return build_torch()
    # The calibration folder by its absolute path: the same folder gives the same key from any working directory.
    settings = {"resolution": resolution, "masks": masks, "batch": batch_size, "int8": int8,
                "calibration": str(Path(calibration).resolve()) if int8 and calibration is not None else None,
                "calibration_images": calibration_images}
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(weights_path)
    if chosen == "auto":
        picked = _auto(model, settings, folder, export, threads, None if int8 else build_torch)
        return build_torch() if picked is None else picked
    return cached_engine(model, chosen, folder, settings, lambda where, name: export(chosen, where, name), threads)
