"""Stage-2 cost: a frozen-detector mask-head step vs a full single-stage step vs rfdetr 1.11.2, and the feature cache.

    python bench/bench_stage2.py --upstream-python /path/to/venv-with-rfdetr/bin/python

Measured in one run, each training step in its own fresh process (so that peak memory is per mode), rounds
alternating the modes so that machine load hits all of them:

* ``stage2 nano`` / ``stage2 full``: our nano detector, frozen (eval mode, no_grad, one query group), plus
  MaskHeadNano / MaskHead; mask losses on class+box-matched queries; AdamW over the head only;
* ``single-stage``: the same detector + MaskHeadNano trained together (train mode, 13 query groups, class / box / mask
  losses on the final, auxiliary and encoder outputs, mask costs in the matcher, rfdetr's segmentation recipe);
* ``upstream seg-nano``: rfdetr 1.11.2's ``RFDETRSegNano`` train step (its own preset: 312 px, patch 12, 4 decoder
  layers), under ``--upstream-python``.

A step is forward + loss + backward + gradient clip + AdamW step, float32 on the CPU, on a batch of random images
with 3 box-shaped masks each. Peak memory is the largest resident-set growth over the steps (sampled every 5 ms),
relative to the process right before its first step (model and batch built). Finally ``train_seg_stage2.py
--cache_features`` runs 2 epochs on a synthetic dataset (random nano detector), ``--rounds`` times; the speed-up is
the median epoch-1 / epoch-2 training time (evaluation excluded).
Targets: stage-2 step <= 0.3x and peak memory <= 0.5x of single-stage; cached epoch 2 >= 5x faster than epoch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from upstream_step import time_upstream_step

REPO = Path(__file__).resolve().parents[1]

def make_batch(resolution: int, batch: int, num_logits: int, seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """A normalised random batch, 3 boxes per image with box-shaped masks (the same kind for every mode)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, resolution, resolution, generator=g)
    targets = []
    for _ in range(batch):
        boxes = torch.cat([torch.rand(3, 2, generator=g) * 0.6 + 0.2, torch.rand(3, 2, generator=g) * 0.3 + 0.1], 1)
        masks = torch.zeros(3, resolution, resolution, dtype=torch.bool)
        for j, (cx, cy, w, h) in enumerate((boxes * resolution).tolist()):
            masks[j, int(cy - h / 2):int(cy + h / 2), int(cx - w / 2):int(cx + w / 2)] = True
        targets.append({"labels": torch.randint(0, num_logits - 1, (3,), generator=g), "boxes": boxes,
                        "masks": masks, "size": torch.tensor([resolution, resolution]),
                        "orig_size": torch.tensor([resolution, resolution])})
    return x, targets


class PeakRSS:
    """Largest resident-set size growth while active, sampled every 5 ms in a thread."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def worker(mode: str, size: str, resolution: int, batch: int, iters: int, warmup: int) -> dict:
    """One mode's step times (s) and peak memory growth (MB), in this process."""
    from rfdetr.config import get_preset
    from rfdetr.losses import build_criterion
    from rfdetr.models import build_model
    from rfdetr.models.mask_head import MaskHeadConfig, build_mask_head
    from rfdetr.models.segmenter import Segmenter
    from rfdetr.train.config import SEGMENTATION_LOSS
    from rfdetr.train.optim import param_groups
    from rfdetr.train.stage2 import build_stage2_criterion

    cfg = get_preset(size).replace(resolution=resolution, num_classes=3)
    torch.manual_seed(0)
    head_kind = "full" if mode == "stage2-full" else "nano"
    head = build_mask_head(MaskHeadConfig(head_kind, cfg.hidden_dim, cfg.dec_layers))
    frozen = mode.startswith("stage2")
    model = Segmenter(build_model(cfg), head, freeze_detector=frozen).train()
    if frozen:
        criterion = build_stage2_criterion(SEGMENTATION_LOSS, cfg.dec_layers)
        groups = [{"params": list(head.parameters())}]
    else:
        model.detector.backbone[0].encoder.encoder.embeddings.mask_token.requires_grad_(False)
        criterion = build_criterion(cfg.dec_layers, group_detr=cfg.group_detr, cls_loss_coef=5.0, segmentation=True)
        groups = param_groups(model.detector, 1e-4, 1.5e-4, 1e-4, 0.8, 0.7, cfg.out_feature_indexes)
        groups.append({"params": list(head.parameters())})
    criterion.train()
    optimizer = torch.optim.AdamW(groups, lr=1e-4, weight_decay=1e-4)
    params = [p for g in groups for p in g["params"]]
    x, targets = make_batch(resolution, batch, cfg.num_classes + 1)
    times = []
    with PeakRSS() as memory:
        for i in range(warmup + iters):
            start = time.perf_counter()
            loss = criterion.total_loss(criterion(model(x), targets))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.1)
            optimizer.step()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in params)
    return {"times": times, "peak_mb": memory.growth_mb, "trainable": trainable}


def run_worker(mode: str, args: argparse.Namespace) -> dict:
    argv = [sys.executable, __file__, "--worker", mode, "--size", args.size, "--resolution", str(args.resolution),
            "--batch", str(args.batch), "--iters", str(args.iters), "--warmup", str(args.warmup),
            "--threads", str(args.threads), "--cache_images", str(args.cache_images)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cache_epochs(args: argparse.Namespace, workdir: Path) -> list[float]:
    """Training time of epochs 1 and 2 of ``train_seg_stage2.py --cache_features`` (nano, random detector)."""
    sys.path.insert(0, str(REPO))  # the script lives at the top level, not in the package
    import train_seg_stage2
    from rfdetr.checkpoint import make_checkpoint, save_checkpoint
    from rfdetr.config import get_preset
    from rfdetr.data.synthetic import CLASS_NAMES, SyntheticSpec, write_synthetic_dataset
    from rfdetr.models import build_model
    from rfdetr.util.loggers import read_jsonl

    side = args.resolution
    dataset = write_synthetic_dataset(workdir / "dataset", SyntheticSpec(
        splits=(("train", args.cache_images), ("valid", 2)), width=side, height=side, seed=1))
    cfg = get_preset(args.size).replace(resolution=side, num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES)
    torch.manual_seed(0)
    ckpt = workdir / "detector.pth"
    save_checkpoint(make_checkpoint(build_model(cfg).state_dict(), cfg, list(CLASS_NAMES)), ckpt)
    argv = ["--size", args.size, "--checkpoint", str(ckpt), "--dataset", str(dataset), "--output", str(workdir),
            "--epochs", "2", "--batch", str(args.batch), "--accum", "1", "--workers", "0", "--augment", "0",
            "--multi_scale", "0", "--cache_features", "--tensorboard", "0", "--run_test", "0",
            "--eval_num_select", "10"]
    if train_seg_stage2.main(train_seg_stage2.get_args_parser().parse_args(argv)) != 0:
        raise RuntimeError("train_seg_stage2.py --cache_features failed")
    (run_dir,) = [p for p in workdir.iterdir() if p.name.startswith("segmentation_")]
    return [r["train_epoch_time"] for r in read_jsonl(run_dir / "log.jsonl")]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="nano")
    parser.add_argument("--resolution", type=int, default=384)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed steps per round and mode")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache_images", "--cache-images", type=int, default=10,
                        help="training images of the --cache_features run (one pass per epoch)")
    parser.add_argument("--upstream-python", "--upstream_python", dest="upstream_python", default=None,
                        help="python of a venv with rfdetr==1.11.2, to time its seg-nano step in the same run")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.worker == "cache":
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps({"epochs": cache_epochs(args, Path(tmp))}))
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.resolution, args.batch, args.iters, args.warmup)))
        return 0
    if args.upstream_python and not Path(args.upstream_python).exists():
        print(f"--upstream-python {args.upstream_python} does not exist", file=sys.stderr)
        return 2
    modes = ["stage2-nano", "stage2-full", "single-stage"]
    results: dict[str, dict[str, list[float]]] = {m: {"times": [], "peak_mb": []} for m in [*modes, "upstream"]}
    trainable: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = Path(tmp) / "upstream_batch.pt"
        torch.save(make_batch(312, args.batch, 91), batch_file)  # SegNano's own resolution
        for _ in range(args.rounds):
            for mode in modes:
                out = run_worker(mode, args)
                results[mode]["times"] += out["times"]
                results[mode]["peak_mb"].append(out["peak_mb"])
                trainable[mode] = out["trainable"]
            if args.upstream_python:
                out = time_upstream_step(args.upstream_python, "RFDETRSegNano", True, batch_file, args.iters,
                                         args.warmup, args.threads)
                results["upstream"]["times"] += out["times"]
                results["upstream"]["peak_mb"].append(out["peak_mb"])
    cache_runs = [run_worker("cache", args)["epochs"] for _ in range(args.rounds)]
    epochs = [statistics.median(run[i] for run in cache_runs) for i in range(2)]
    step = {m: statistics.median(r["times"]) for m, r in results.items() if r["times"]}
    peak = {m: max(r["peak_mb"]) for m, r in results.items() if r["peak_mb"]}
    print(f"torch {torch.__version__}, {args.threads} threads, {args.size} @ {args.resolution}, batch {args.batch}; "
          f"median of {args.rounds}x{args.iters} steps, peak = RSS growth over the steps")
    for mode in step:
        what = "rfdetr 1.11.2 RFDETRSegNano @ 312" if mode == "upstream" else mode
        params = f"   trainable {trainable[mode]:,}" if mode in trainable else ""
        print(f"  {what:34s} {step[mode]:7.2f} s/step   peak +{peak[mode]:7.0f} MB{params}")
    single = step["single-stage"]
    for mode in ("stage2-nano", "stage2-full"):
        print(f"  {mode} / single-stage: step {step[mode] / single:.2f}x (target <= 0.30x), "
              f"peak memory {peak[mode] / peak['single-stage']:.2f}x (target <= 0.50x)")
    if "upstream" in step:
        print(f"  stage2-nano / upstream seg-nano step: {step['stage2-nano'] / step['upstream']:.2f}x")
    print(f"  --cache_features: epoch 1 {epochs[0]:.2f} s, epoch 2 {epochs[1]:.2f} s (training only, "
          f"{args.cache_images} images, median of {args.rounds} runs): {epochs[0] / epochs[1]:.1f}x faster "
          "(target >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
