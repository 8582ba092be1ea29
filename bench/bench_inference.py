"""Inference speed: our forward vs upstream rfdetr 1.11.2's, measured side by side in one run.

    python bench/bench_inference.py --size nano --upstream-python /path/to/venv-with-rfdetr/bin/python
    python bench/bench_inference.py --size nano seg-nano --onnx --upstream-python /path/to/venv/bin/python
    python bench/bench_inference.py --size nano --compare /path/to/other/checkout   # A/B two versions of ours

Every model runs in its own worker process, built once and kept alive: our float32 forward, our bfloat16 (CPU
autocast) forward, with ``--onnx`` our export run by onnxruntime (float32, ``--threads`` intra-op threads), with
``--upstream-python`` upstream's float32 forward of the same architecture (its interpreter, cwd ``/`` and no
``PYTHONPATH``, since both packages are called ``rfdetr``), and with ``--compare`` our float32 forward from another
checkout. The workers take turns, ``--iters`` timed forwards each per round, in a rotating order, so that the load
changes of a shared machine hit every model alike; separate processes also keep one model's allocations from changing
another's heap. Printed: medians in ms, the minor page faults per forward (memory handed back to the OS and faulted in
again, a cost of allocation churn), the ratio of medians to upstream and the median of the per-round ratios (the
steadier of the two on a noisy machine).

The PyTorch forwards (ours and upstream's) are the full eval forward (auxiliary and encoder outputs included, as
``predict`` runs it) on the same random input; the ONNX graph is the export graph (last decoder layer only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from harness import SERVE, Worker, measure

REPO = Path(__file__).resolve().parent.parent

# Runs in every worker process. argv[1] is the JSON config; then each stdin line "n" asks for n timed forwards,
# answered by one JSON line: the times in ms and the minor page faults they took; "0" (or EOF) ends the worker.
_WORKER = SERVE + r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import logging; logging.disable(logging.WARNING)
import torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
res, batch = cfg["resolution"], cfg["batch"]
x = torch.randn(batch, 3, res, res)
if cfg["impl"] == "upstream":
    import rfdetr
    net = getattr(rfdetr, cfg["upstream_name"])(pretrain_weights=None, resolution=res).model.model.eval()
    run = lambda: net(x)
else:
    from rfdetr.config import get_preset
    from rfdetr.models import build_model
    net = build_model(get_preset(cfg["size"]).replace(resolution=res)).eval()
    if cfg["impl"] == "onnx":
        import tempfile, onnxruntime as ort
        from rfdetr.deploy.export.formats.onnx import export_onnx
        path = export_onnx(net, tempfile.mkdtemp(prefix="bench_onnx_") + "/model.onnx", res)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = cfg["threads"], 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"input": x.numpy()}
        run = lambda: session.run(None, feed)
    elif cfg["impl"] == "bf16":
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(x)
    else:
        run = lambda: net(x)
serve(run, cfg["warmup"])
"""


def worker_config(size: str, resolution: int, batch: int, threads: int, warmup: int) -> dict:
    """The worker settings shared by every implementation of one preset (add ``impl``)."""
    from rfdetr.config import get_preset

    return {
        "size": size,
        "resolution": resolution,
        "batch": batch,
        "threads": threads,
        "warmup": warmup,
        "upstream_name": get_preset(size).upstream_name,
    }


def make_workers(args: argparse.Namespace, size: str, resolution: int) -> list[Worker]:
    """The workers for one preset, in report order; upstream (when asked for) is the last."""
    base = worker_config(size, resolution, args.batch, args.threads, args.warmup)
    ours = str(REPO)
    workers = [Worker("ours fp32", sys.executable, {**base, "impl": "ours"}, ours, _WORKER)]
    for path in args.compare:
        # Absolute: the workers run in "/", where a relative PYTHONPATH would silently import the installed package.
        workers.append(Worker(f"ours fp32 @ {path}", sys.executable, {**base, "impl": "ours"}, str(path.resolve()),
                              _WORKER))
    if not args.no_bf16:
        # bf16 can be several times slower than fp32 on CPUs without native bf16: fewer iterations per round.
        workers.append(Worker("ours bf16", sys.executable, {**base, "impl": "bf16"}, ours, _WORKER, iters_scale=0.34))
    if args.onnx:
        workers.append(Worker("onnxruntime fp32", sys.executable, {**base, "impl": "onnx"}, ours, _WORKER))
    if args.upstream_python:
        upstream = {**base, "impl": "upstream"}
        workers.append(Worker("upstream 1.11.2 fp32", args.upstream_python, upstream, None, _WORKER))
    return workers


def report(size: str, resolution: int, workers: list[Worker], upstream: Worker | None) -> str:
    """Medians (ms) and, with upstream, the ratio of medians and the median per-round ratio."""
    lines = [f"{size} @ {resolution}:"]
    for worker in workers:
        faults = worker.faults / len(worker.times)
        line = (
            f"  {worker.name:<28} median {statistics.median(worker.times):8.1f} ms  ({len(worker.times)} runs, "
            f"{faults:.0f} page faults per forward)"
        )
        if upstream is not None and worker is not upstream:
            ratio = statistics.median(worker.times) / statistics.median(upstream.times)
            per_round = statistics.median(a / b for a, b in zip(worker.rounds, upstream.rounds, strict=True))
            line += f"  vs upstream {ratio:.2f}x (per-round median {per_round:.2f}x)"
        lines.append(line)
    if upstream is not None:
        lines.append("  (fp32 target: ours <= 0.80x upstream)")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", nargs="+", default=["nano"], help="presets to time")
    parser.add_argument("--resolution", type=int, default=None, help="default: each preset's own")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed forwards per worker and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of turns between the workers")
    parser.add_argument("--onnx", action="store_true", help="also time the ONNX export in onnxruntime")
    parser.add_argument("--no-bf16", "--no_bf16", dest="no_bf16", action="store_true", help="skip the bf16 worker")
    parser.add_argument(
        "--compare",
        nargs="*",
        default=[],
        type=Path,
        help="other checkouts of this repo whose fp32 forward is timed alongside (A/B)",
    )
    parser.add_argument(
        "--upstream-python",
        "--upstream_python",
        dest="upstream_python",
        default=None,
        help="python of a venv with rfdetr==1.11.2, to time upstream in the same run",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    if args.upstream_python and not Path(args.upstream_python).exists():
        print(f"--upstream-python {args.upstream_python} does not exist", file=sys.stderr)
        return 2
    for path in args.compare:
        if not (path / "rfdetr" / "__init__.py").is_file():
            print(f"--compare {path}: no rfdetr package there (expected {path}/rfdetr/__init__.py)", file=sys.stderr)
            return 2
    import torch

    from rfdetr.config import get_preset

    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {args.rounds} rounds x "
        f"{args.iters} forwards per worker, one process per model"
    )
    for size in args.size:
        res = args.resolution or get_preset(size).resolution
        workers = make_workers(args, size, res)
        measure(workers, args.rounds, args.iters)
        upstream = workers[-1] if args.upstream_python else None
        print(report(size, res, workers, upstream), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
