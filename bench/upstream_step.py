"""rfdetr 1.11.2's training step, timed in its own interpreter: the one upstream harness of the benchmarks.

Both packages are called ``rfdetr``, so upstream runs in a subprocess of ``--upstream-python`` with cwd ``/`` and
without ``PYTHONPATH`` (either would let our package shadow it). The step is upstream's own model and criterion:
forward + loss + backward + gradient clip (0.1) + AdamW, float32 on the CPU, all 13 query groups, auxiliary and
encoder losses (and the segmentation loss for seg models).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

_SCRIPT = r"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
import logging; logging.disable(logging.WARNING)
import torch
import rfdetr
from rfdetr.config import SegmentationTrainConfig, TrainConfig
from rfdetr.models.lwdetr import build_criterion_from_config
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
wrapper = getattr(rfdetr, cfg["upstream_name"])(pretrain_weights=None)
net = wrapper.model.model.train()
train_cls = SegmentationTrainConfig if cfg["seg"] else TrainConfig
criterion, _ = build_criterion_from_config(wrapper.model_config, train_cls(dataset_dir=".", output_dir="."))
criterion.train()
opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
x, targets = torch.load(cfg["batch"], weights_only=True)
# Peak memory from the kernel's high-water mark: no sampling thread, whose wake-ups would slow the timed steps.
import resource
base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
times = []
for i in range(cfg["warmup"] + cfg["iters"]):
    t = time.perf_counter()
    out = net(x, targets)
    losses = criterion(out, targets)
    loss = sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
    opt.step()
    if i >= cfg["warmup"]:
        times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
print(json.dumps({"times": times, "peak_mb": (peak - base) / 2**20}))
"""


def time_upstream_step(
    python: str,
    upstream_name: str,
    seg: bool,
    batch_file: Path,
    iters: int,
    warmup: int,
    threads: int,
    timeout: float = 3600,
) -> dict[str, object]:
    """Time rfdetr's train step on the batch saved in ``batch_file`` (``torch.save((images, targets))``).

    Args:
        python: interpreter of a venv with rfdetr==1.11.2.
        upstream_name: rfdetr class, e.g. ``RFDETRNano`` or ``RFDETRSegNano`` (its own preset and resolution).
        seg: use ``SegmentationTrainConfig`` (class loss 5, mask losses) instead of ``TrainConfig``.
        batch_file, iters, warmup, threads: what to run and how often (warm-up steps are not timed).

    Returns:
        ``{"times": [seconds per timed step], "peak_mb": resident-set growth over the steps}``.

    Raises:
        RuntimeError: the upstream process failed (its stderr tail is in the message).
    """
    cfg = {
        "upstream_name": upstream_name,
        "seg": seg,
        "batch": str(batch_file),
        "iters": iters,
        "warmup": warmup,
        "threads": threads,
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [python, "-c", _SCRIPT, json.dumps(cfg)], capture_output=True, text=True, cwd="/", env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"upstream benchmark ({python}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
