"""How fast can an exact RF-DETR forward be on this CPU? The kernel floor next to ours and upstream's forward.

    python bench/bench_gemm_floor.py --size nano --upstream-python /path/to/venv-with-rfdetr/bin/python

The ViT linears and attention of an RF-DETR forward are a fixed amount of arithmetic (nano at 384: ~25 GFLOP of
GEMMs, ~3 GFLOP of attention), set by the architecture; an implementation with upstream's outputs cannot skip any of
it. This benchmark records every matrix multiply (``mm``/``addmm``/``bmm``) and every
``scaled_dot_product_attention`` call our forward issues, with their shapes, then times those same calls in
isolation, back to back, with the same thread count: their sum is a floor no exact fp32 implementation using this
machine's BLAS and PyTorch's attention kernel can beat (convolutions, norms and the rest come on top). For scale it
also prints the BLAS's rate on one large square GEMM. It prints the floor, our forward and (with
``--upstream-python``) upstream's forward from bench_inference.py's worker processes (interleaved), and the best
ratio to upstream the floor allows."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import _WORKER, REPO, worker_config  # noqa: E402
from harness import Worker, measure  # noqa: E402

from rfdetr.config import get_preset  # noqa: E402
from rfdetr.models import build_model  # noqa: E402

_GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm"}
_ATTENTION_OP = "aten::scaled_dot_product_attention"


def gemm_shapes(size: str, resolution: int, batch: int) -> Counter:
    """(op, input shapes) -> calls per forward, for every GEMM of our eval forward."""
    torch.manual_seed(0)
    model = build_model(get_preset(size).replace(resolution=resolution)).eval()
    x = torch.randn(batch, 3, resolution, resolution)
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(x)
    calls: Counter = Counter()
    for event in prof.events():
        if event.name in _GEMM_OPS or event.name == _ATTENTION_OP:
            calls[(event.name, tuple(tuple(s) for s in event.input_shapes))] += 1
    return calls


def _timed(work: list, iters: int) -> float:
    """Median ms of running every callable in ``work`` back to back (2 warm-up passes)."""
    times = []
    with torch.inference_mode():
        for i in range(iters + 2):
            start = time.perf_counter()
            for fn in work:
                fn()
            if i >= 2:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def time_kernels(calls: Counter, iters: int) -> dict[str, float]:
    """Times (median ms) and GFLOP per forward of the recorded GEMMs and attention calls, each run in isolation.

    Returns keys ``gemm_ms``, ``gemm_gflop``, ``attention_ms``, ``attention_gflop``.
    """
    gemms: list = []
    attention: list = []
    gflop = attention_gflop = 0.0
    for (name, shapes), count in calls.items():
        if name == "aten::mm":
            a, b = torch.randn(shapes[0]), torch.randn(shapes[1])
            m, k, n = shapes[0][0], shapes[0][1], shapes[1][1]
            gemms += [lambda a=a, b=b: torch.mm(a, b)] * count
            gflop += 2 * m * k * n * count / 1e9
        elif name == "aten::addmm":
            bias, a, b = torch.randn(shapes[0]), torch.randn(shapes[1]), torch.randn(shapes[2])
            m, k, n = shapes[1][0], shapes[1][1], shapes[2][1]
            gemms += [lambda bias=bias, a=a, b=b: torch.addmm(bias, a, b)] * count
            gflop += 2 * m * k * n * count / 1e9
        elif name == _ATTENTION_OP:
            # Same q/k/v shapes through the same kernel (SDPA picks it from the shapes); FLOPs: QK^T and AV.
            q, k, v = (torch.randn(shape) for shape in shapes[:3])
            attention += [lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)] * count
            attention_gflop += 4 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1] * count / 1e9
        elif name == "aten::bmm":
            a, b = torch.randn(shapes[0]), torch.randn(shapes[1])
            bs, m, k, n = shapes[0][0], shapes[0][1], shapes[0][2], shapes[1][2]
            gemms += [lambda a=a, b=b: torch.bmm(a, b)] * count
            gflop += 2 * bs * m * k * n * count / 1e9
    return {
        "gemm_ms": _timed(gemms, iters),
        "gemm_gflop": gflop,
        "attention_ms": _timed(attention, iters),
        "attention_gflop": attention_gflop,
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="nano")
    parser.add_argument("--resolution", type=int, default=None, help="default: the preset's own")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--upstream-python", "--upstream_python", dest="upstream_python", default=None)
    return parser


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    res = args.resolution or get_preset(args.size).resolution
    calls = gemm_shapes(args.size, res, args.batch)
    kernels = time_kernels(calls, args.iters)
    square = torch.randn(2048, 2048)
    peak = 2 * 2048**3 / _timed([lambda: torch.mm(square, square)], 5) / 1e6
    gemm, gflop = kernels["gemm_ms"], kernels["gemm_gflop"]
    floor = gemm + kernels["attention_ms"]
    base = worker_config(args.size, res, args.batch, args.threads, warmup=2)
    workers = [Worker("ours", sys.executable, {**base, "impl": "ours"}, str(REPO), _WORKER)]
    if args.upstream_python:
        workers.append(Worker("upstream", args.upstream_python, {**base, "impl": "upstream"}, None, _WORKER))
    measure(workers, rounds=max(1, args.iters // 3), iters=3)
    ours = statistics.median(workers[0].times)
    line = (
        f"{args.size} @ {res}, batch {args.batch}, {args.threads} threads:\n"
        f"  GEMMs: {sum(c for (n, _), c in calls.items() if n in _GEMM_OPS)} calls, {gflop:.1f} GFLOP, "
        f"{gemm:.1f} ms in isolation ({gflop / gemm * 1000:.0f} GFLOP/s; a 2048^2 GEMM runs at {peak:.0f})\n"
        f"  attention: {sum(c for (n, _), c in calls.items() if n == _ATTENTION_OP)} calls, "
        f"{kernels['attention_gflop']:.1f} GFLOP, {kernels['attention_ms']:.1f} ms in isolation\n"
        f"  floor (GEMMs + attention): {floor:.1f} ms; ours fp32 {ours:.1f} ms (the floor is {floor / ours:.0%} of it)"
    )
    if args.upstream_python:
        up = statistics.median(workers[1].times)
        line += f"\n  upstream {up:.1f} ms: ours/upstream {ours / up:.2f}x, floor/upstream {floor / up:.2f}x"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
