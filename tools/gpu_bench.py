"""Timed training steps on synthetic data: iterations per second and peak GPU memory, stage 1 or stage 2.

    python tools/gpu_bench.py --stage 1            # nano detector, 384 px, batch 4, the training default precision
    python tools/gpu_bench.py --stage 2            # the same detector frozen + MaskHeadNano (stage 2)

Each step is :func:`rfdetr.train.engine.train_one_epoch`'s (autocast as ``fit`` picks it, GradScaler for float16,
clipping, AdamW) on random pixels with 3 random boxes (and box-shaped masks) per image; the first ``--warmup`` steps
(CUDA context, cuDNN autotuning, allocator growth) are not timed. Prints one line ``stage N: ... it/s, peak ... MiB``;
exit 2 with a message when CUDA is asked for but absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rfdetr.models import build_model  # noqa: E402
from rfdetr.models.mask_head import MaskHeadConfig, build_mask_head  # noqa: E402
from rfdetr.models.segmenter import Segmenter  # noqa: E402
from rfdetr.train.args import model_config_for  # noqa: E402
from rfdetr.train.config import DETECTION_LOSS, SEGMENTATION_LOSS, OptimConfig  # noqa: E402
from rfdetr.train.engine import StepSettings, train_one_epoch  # noqa: E402
from rfdetr.train.optim import autocast_dtype, build_grad_scaler, make_adamw  # noqa: E402
from rfdetr.train.stage1 import build_criterion_for, detector_param_groups, freeze_unused  # noqa: E402
from rfdetr.train.stage2 import build_stage2_criterion, mask_head_param_groups  # noqa: E402

NUM_CLASSES = 3


def synthetic_batch(resolution: int, batch: int, seed: int) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Random pixels [B, 3, R, R] with 3 random boxes per image and their box-shaped masks (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, resolution, resolution, generator=g)
    targets = []
    for _ in range(batch):
        centres = torch.rand(3, 2, generator=g) * 0.6 + 0.2
        boxes = torch.cat([centres, torch.rand(3, 2, generator=g) * 0.3 + 0.1], 1)
        masks = torch.zeros(3, resolution, resolution, dtype=torch.bool)
        for j, (cx, cy, w, h) in enumerate((boxes * resolution).tolist()):
            masks[j, int(cy - h / 2):int(cy + h / 2), int(cx - w / 2):int(cx + w / 2)] = True
        size = torch.tensor([resolution, resolution])
        targets.append({"labels": torch.randint(0, NUM_CLASSES, (3,), generator=g), "boxes": boxes, "masks": masks,
                        "size": size, "orig_size": size})
    return images, targets


def build(stage: int, size: str, resolution: int) -> tuple[torch.nn.Module, torch.nn.Module, list]:
    """(model, criterion, optimizer groups) of stage 1 (the detector) or stage 2 (frozen detector + nano head)."""
    cfg = model_config_for(size, resolution, NUM_CLASSES, [f"class{i}" for i in range(NUM_CLASSES)])
    torch.manual_seed(0)
    detector = build_model(cfg)
    freeze_unused(detector)
    if stage == 1:
        groups = detector_param_groups(cfg, OptimConfig())(detector)
        return detector.train(), build_criterion_for(cfg, DETECTION_LOSS), groups
    model = Segmenter(detector, build_mask_head(MaskHeadConfig("nano", cfg.hidden_dim, cfg.dec_layers)),
                      freeze_detector=True)
    groups = mask_head_param_groups(OptimConfig(lr=1e-3))(model)
    return model.train(), build_stage2_criterion(SEGMENTATION_LOSS, cfg.dec_layers), groups


def bench(stage: int, size: str, resolution: int, batch: int, steps: int, warmup: int, device: torch.device,
          amp: bool = True) -> dict[str, float | str]:
    """Train ``warmup + steps`` steps; returns it/s over the timed ones, peak memory (MiB, CUDA) and the dtype."""
    model, criterion, groups = build(stage, size, resolution)
    model.to(device)
    dtype = autocast_dtype(device, amp)
    scaler = build_grad_scaler(device, dtype)
    optimizer = make_adamw(groups, lr=1e-4, weight_decay=1e-4)
    loader = [synthetic_batch(resolution, batch, seed) for seed in range(warmup + steps)]
    stamps: list[float] = []

    def on_step(step: int, logs: dict[str, float]) -> None:
        # train_one_epoch reads each step's loss with .item(): the GPU has finished the step when this runs.
        stamps.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    settings = StepSettings(grad_accum_steps=1, clip_max_norm=0.1, autocast_dtype=dtype)
    train_one_epoch(model, criterion, loader, optimizer, None, device, 0, settings, scaler=scaler, on_step=on_step,
                    progress=False)
    timed = stamps[warmup:]
    its = (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"its": its, "peak_mib": peak, "dtype": str(dtype).replace("torch.", "") if dtype else "float32"}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--size", default="nano", help="detection preset")
    parser.add_argument("--resolution", type=int, default=384)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no_amp", action="store_true", help="float32")
    return parser


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench.py: error: CUDA is not available (use --device cpu for a slow CPU run)", file=sys.stderr)
        return 2
    r = bench(args.stage, args.size, args.resolution, args.batch, args.steps, args.warmup, device, not args.no_amp)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"stage {args.stage}: {args.size} {args.resolution} px batch {args.batch} {r['dtype']} on {name}: "
          f"{r['its']:.2f} it/s, peak {r['peak_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
