"""Inference speed: our forward vs upstream rfdetr 1.11.2's, measured side by side in one run.

    python bench/bench_inference.py --size nano --upstream-python /path/to/venv-with-rfdetr/bin/python
    python bench/bench_inference.py --size nano seg-nano --onnx --upstream-python /path/to/venv/bin/python

For each size: our float32 forward, our bfloat16 (CPU autocast) forward, with ``--onnx`` the same model exported with
:func:`rfdetr.onnx_export.export_onnx` at the same resolution and run by onnxruntime (float32, ``--threads`` intra-op
threads), and, when ``--upstream-python`` names an interpreter with ``rfdetr==1.11.2`` installed, upstream's float32
forward of the same architecture on the same input, in a subprocess (the two packages share the name ``rfdetr``).
Rounds alternate ours / onnxruntime / upstream so that load changes on the machine hit all. Prints medians in ms and
the ratios to upstream. The PyTorch forwards (ours and upstream's) are the full eval forward (auxiliary and encoder
outputs included, as ``predict`` runs it); the ONNX graph is the export graph (last decoder layer only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rfdetr.config import get_preset
from rfdetr.models import build_model

# Runs under the upstream interpreter: builds the same preset with random weights and times its eval forward.
_UPSTREAM_SCRIPT = r"""
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import logging; logging.disable(logging.WARNING)
import torch
import rfdetr
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
model = getattr(rfdetr, cfg["upstream_name"])(pretrain_weights=None, resolution=cfg["resolution"])
net = model.model.model.eval()
x = torch.randn(cfg["batch"], 3, cfg["resolution"], cfg["resolution"])
times = []
with torch.inference_mode():
    for _ in range(cfg["warmup"]):
        net(x)
    for _ in range(cfg["iters"]):
        t = time.perf_counter(); net(x); times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"version": rfdetr.__version__ if hasattr(rfdetr, "__version__") else "?", "times": times}))
"""


def time_ours(size: str, resolution: int, batch: int, iters: int, warmup: int,
              dtype: torch.dtype) -> list[float]:
    """Per-iteration forward times (ms) of our model for ``size``."""
    cfg = get_preset(size).replace(resolution=resolution)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randn(batch, 3, resolution, resolution)
    times = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            model(x)
        for _ in range(iters):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1000)
    return times


def export_ours(size: str, resolution: int, folder: Path) -> Path:
    """Our model for ``size`` (the weights of :func:`time_ours`) exported to ONNX at ``resolution``."""
    from rfdetr.onnx_export import export_onnx

    cfg = get_preset(size).replace(resolution=resolution)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    return export_onnx(model, folder / f"{size}_{resolution}.onnx", resolution)


def onnx_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_onnx(session: Any, resolution: int, batch: int, iters: int, warmup: int) -> list[float]:
    """Per-iteration onnxruntime run times (ms) of an exported model (fixed batch ``batch``)."""
    x = torch.randn(batch, 3, resolution, resolution).numpy()
    times = []
    for _ in range(warmup):
        session.run(None, {"input": x})
    for _ in range(iters):
        t = time.perf_counter()
        session.run(None, {"input": x})
        times.append((time.perf_counter() - t) * 1000)
    return times


def time_upstream(python: str, size: str, resolution: int, batch: int, iters: int, warmup: int,
                  threads: int) -> list[float]:
    """Per-iteration forward times (ms) of upstream rfdetr, run under ``python``."""
    cfg = {"upstream_name": get_preset(size).upstream_name, "resolution": resolution, "batch": batch,
           "iters": iters, "warmup": warmup, "threads": threads}
    # cwd "/" and no PYTHONPATH, so that our own rfdetr/ folder cannot shadow upstream's.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([python, "-c", _UPSTREAM_SCRIPT, json.dumps(cfg)], capture_output=True, text=True,
                          cwd="/", env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"upstream benchmark failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["times"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", nargs="+", default=["nano"], help="presets to time")
    parser.add_argument("--resolution", type=int, default=None, help="default: each preset's own")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating ours/upstream rounds")
    parser.add_argument("--onnx", action="store_true", help="also time the ONNX export in onnxruntime")
    parser.add_argument("--upstream-python", "--upstream_python", dest="upstream_python", default=None,
                        help="python of a venv with rfdetr==1.11.2, to time upstream in the same run")
    return parser


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.upstream_python and not Path(args.upstream_python).exists():
        print(f"--upstream-python {args.upstream_python} does not exist", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, medians over "
          f"{args.rounds}x{args.iters} iterations")
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as folder:
        for size in args.size:
            res = args.resolution or get_preset(size).resolution
            session = onnx_session(export_ours(size, res, Path(folder)), args.threads) if args.onnx else None
            ours32: list[float] = []
            ours16: list[float] = []
            ort_times: list[float] = []
            up: list[float] = []
            for _ in range(args.rounds):
                ours32 += time_ours(size, res, args.batch, args.iters, args.warmup, torch.float32)
                ours16 += time_ours(size, res, args.batch, args.iters, args.warmup, torch.bfloat16)
                if session is not None:
                    ort_times += time_onnx(session, res, args.batch, args.iters, args.warmup)
                if args.upstream_python:
                    up += time_upstream(args.upstream_python, size, res, args.batch, args.iters, args.warmup,
                                        args.threads)
            print(_report(size, res, ours32, ours16, ort_times, up))
    return 0


def _report(size: str, res: int, ours32: list[float], ours16: list[float], ort_times: list[float],
            up: list[float]) -> str:
    """One line of medians (ms) and ratios to upstream fp32."""
    m32, m16 = statistics.median(ours32), statistics.median(ours16)
    mu = statistics.median(up) if up else None
    parts = [f"ours fp32 {m32:.1f} ms", f"ours bf16 {m16:.1f} ms"]
    if ort_times:
        parts.append(f"onnxruntime fp32 {statistics.median(ort_times):.1f} ms")
    if mu is not None:
        parts.append(f"upstream 1.11.2 fp32 {mu:.1f} ms")
        ratios = [f"ours fp32 {m32 / mu:.2f}x", f"ours bf16 {m16 / mu:.2f}x"]
        if ort_times:
            ratios.append(f"onnxruntime {statistics.median(ort_times) / mu:.2f}x")
        parts.append("vs upstream: " + ", ".join(ratios) + " (fp32 target <= 0.80x)")
    return f"{size} @ {res}: " + ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
