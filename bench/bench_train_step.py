"""Training-step speed: forward + loss + backward + AdamW step, ours vs upstream rfdetr 1.11.2 in the same run.

    python bench/bench_train_step.py --size nano --upstream-python /path/to/venv-with-rfdetr/bin/python
    python bench/bench_train_step.py --size seg-nano ...

Both sides train the same preset from random weights on the same kind of batch (2 images at the preset's resolution,
3 random boxes each, masks for segmentation presets), float32 on the CPU with 2 threads, all 13 query groups,
auxiliary and encoder losses. Rounds alternate ours / upstream so that machine load hits both. Prints the median step
time of each, the ratio ours / upstream (target <= 0.90x), and our peak RSS growth.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from upstream_step import time_upstream_step

from rfdetr.config import get_preset
from rfdetr.losses import build_criterion
from rfdetr.models import build_model
from rfdetr.train.optim import make_adamw, param_groups


def make_batch(resolution: int, batch: int, seg: bool, seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """A normalised random batch with 3 boxes per image (and their box-shaped masks for segmentation)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, resolution, resolution, generator=g)
    targets = []
    for _ in range(batch):
        cxcy = torch.rand(3, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(3, 2, generator=g) * 0.3 + 0.1
        boxes = torch.cat([cxcy, wh], 1)
        t = {"labels": torch.randint(0, 90, (3,), generator=g), "boxes": boxes,
             "size": torch.tensor([resolution, resolution]), "orig_size": torch.tensor([resolution, resolution])}
        if seg:
            masks = torch.zeros(3, resolution, resolution, dtype=torch.bool)
            for j, (cx, cy, w, h) in enumerate((boxes * resolution).tolist()):
                masks[j, int(cy - h / 2):int(cy + h / 2), int(cx - w / 2):int(cx + w / 2)] = True
            t["masks"] = masks
        targets.append(t)
    return x, targets


def time_ours(size: str, x: torch.Tensor, targets: list[dict], iters: int, warmup: int) -> list[float]:
    """Per-step times (ms) of our train step for ``size``."""
    cfg = get_preset(size)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    model.backbone[0].encoder.encoder.embeddings.mask_token.requires_grad_(False)
    criterion = build_criterion(cfg.dec_layers, group_detr=cfg.group_detr, segmentation=cfg.segmentation_head).train()
    groups = param_groups(model, 1e-4, 1.5e-4, 1e-4, 0.8, 0.7, cfg.out_feature_indexes)
    opt = make_adamw(groups, lr=1e-4, weight_decay=1e-4)
    times = []
    for i in range(warmup + iters):
        t = time.perf_counter()
        losses = criterion(model(x), targets)
        loss = criterion.total_loss(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1000)
    return times


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="nano", help="preset (e.g. nano, seg-nano)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--upstream-python", "--upstream_python", dest="upstream_python", default=None,
                        help="python of a venv with rfdetr==1.11.2, to time upstream in the same run")
    return parser


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    cfg = get_preset(args.size)
    x, targets = make_batch(cfg.resolution, args.batch, cfg.segmentation_head)
    batch_file = Path("/tmp") / f"bench_train_step_{args.size}.pt"
    torch.save((x, targets), batch_file)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ours: list[float] = []
    up: list[float] = []
    for _ in range(args.rounds):
        ours += time_ours(args.size, x, targets, args.iters, args.warmup)
        if args.upstream_python:
            result = time_upstream_step(args.upstream_python, cfg.upstream_name, cfg.segmentation_head, batch_file,
                                        args.iters, args.warmup, args.threads)
            up += [t * 1000 for t in result["times"]]
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    line = (f"{args.size} @ {cfg.resolution}, batch {args.batch}, {args.threads} threads: "
            f"ours {statistics.median(ours):.0f} ms/step (peak RSS +{peak_mb:.0f} MB)")
    if up:
        ratio = statistics.median(ours) / statistics.median(up)
        line += f", upstream {statistics.median(up):.0f} ms/step, ratio ours/upstream {ratio:.2f}x (target <= 0.90x)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
