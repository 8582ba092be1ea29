"""``engine="auto"``: time each candidate engine on this host, pick the fastest, and remember the pick.

Which runtime is fastest depends on the CPU (bf16 / AMX / VNNI, the cache sizes, the thread count), so ``auto``
measures rather than follows an order: :func:`measure` times a few forwards of each candidate at the model's input
size, and the decision is written to a small JSON (:func:`decision_path`) keyed by the weights, the settings and
:func:`host_key` (CPU model, the instruction-set flags the runtimes choose kernels by, thread count) and the installed
candidates, so that a second call on the same host neither exports nor measures again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from rfdetr.util.run_dir import write_json_atomic

__all__ = ["RELEVANT_CPU_FLAGS", "decision_path", "host_key", "measure", "read_decision", "write_decision"]

logger = logging.getLogger(__name__)

# The /proc/cpuinfo flags whose presence changes which kernels the runtimes pick (and so which engine wins).
RELEVANT_CPU_FLAGS: tuple[str, ...] = (
    "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "asimd", "asimddp", "sve", "bf16", "i8mm",
)
# Warm-up forwards (first-call allocations, lazy kernel selection) and timed rounds (the median is kept).
WARMUP = 2
REPEATS = 7


def _cpuinfo() -> tuple[str, list[str]]:
    """CPU model name and its flags from /proc/cpuinfo (Linux); elsewhere the platform's processor string."""
    name, flags = "", []
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: no flags to read
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value.split()
    return name or platform.processor() or platform.machine(), flags


def host_key(threads: int | None) -> dict[str, Any]:
    """What makes a measurement valid only on this host: CPU model, relevant flags, usable CPUs and threads."""
    name, flags = _cpuinfo()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": name, "machine": platform.machine(), "flags": [f for f in RELEVANT_CPU_FLAGS if f in flags],
            "cpus": cpus, "threads": threads if threads is not None else "default"}


def decision_path(cache_dir: Path, weights_digest: str, settings: Mapping[str, Any], host: Mapping[str, Any],
                  candidates: list[str]) -> Path:
    """The decision file of these weights (their digest), settings, host and candidate engines."""
    payload = json.dumps({"weights": weights_digest, "settings": dict(settings), "host": dict(host),
                          "candidates": candidates}, sort_keys=True, default=str)
    return cache_dir / f"auto_{hashlib.sha256(payload.encode()).hexdigest()[:16]}.json"


def read_decision(path: Path, candidates: list[str]) -> dict[str, Any] | None:
    """The cached decision, or None when there is none (or it is unreadable or names no candidate: measured again)."""
    if not path.is_file():
        return None
    try:
        decision = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        logger.warning("engine auto: ignoring the unreadable decision file %s (%s); measuring again", path, err)
        return None
    if not isinstance(decision, dict) or decision.get("engine") not in candidates:
        logger.warning("engine auto: the decision file %s names no candidate engine; measuring again", path)
        return None
    return decision


def write_decision(path: Path, engine: str, ms: Mapping[str, float], host: Mapping[str, Any],
                   settings: Mapping[str, Any], shape: list[int]) -> None:
    """Record the pick and every candidate's measured milliseconds (atomically)."""
    write_json_atomic(path, {"engine": engine, "ms": dict(ms), "input": shape, "warmup": WARMUP, "repeats": REPEATS,
                             "host": dict(host), "settings": dict(settings),
                             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def measure(forwards: Mapping[str, Callable[[torch.Tensor], Any]], pixels: torch.Tensor,
            threads: int | None = None) -> dict[str, float]:
    """Median milliseconds of each candidate's ``forward(pixels)``: :data:`WARMUP` untimed calls each, then
    :data:`REPEATS` rounds that time every candidate once, in a rotating order, so that a change in the host's load
    (other processes, clock boost) falls on all of them alike instead of on whichever ran then.

    Args:
        forwards: candidate name -> the network's forward on normalised pixels [B, 3, R, R].
        pixels: the input.
        threads: PyTorch's threads while timing (restored after; PyTorch's own candidate runs on them); runtimes
            got theirs when loaded.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    names = list(forwards)
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        with torch.inference_mode():
            for name in names:
                for _ in range(WARMUP):
                    forwards[name](pixels)
            for round_ in range(REPEATS):
                for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                    start = time.perf_counter()
                    forwards[name](pixels)
                    times[name].append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    return {name: statistics.median(t) for name, t in times.items()}
