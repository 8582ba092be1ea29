"""``make demo``: the whole pipeline on the embedded synthetic dataset, on the CPU, in a few minutes.

1. write the synthetic dataset (shapes with polygon, RLE and uncompressed-RLE masks) and check the environment and
   the dataset (``validate_setup.py``);
2. stage 1: train a detector (``train_detector_stage1.py``);
3. cut its class heads to the dataset's classes by name (``shrink_head.py --dataset``; here the classes are the same,
   so this only proves the head matches the dataset, as it must before stage 2);
4. stage 2: train a mask head on the frozen detector (``train_seg_stage2.py --cache_features``);
5. predict on a held-out test image with ``RFDETR(pretrain_weights=<stage-2 checkpoint>, masks=True)`` and write
   the picture with boxes and masks to ``{output}/prediction.png``.

The model is the ``tiny`` test configuration (a 4-block, 96-wide ViT; about 1M parameters) at 128 px, trained from
scratch on 24 images, so that the whole demo takes about two minutes on two CPU cores; the commands are the real
ones. Such a model generalises only roughly to the held-out image (expect coarse masks and the odd wrong class):
real runs start stage 1 from the official weights (``--pretrained``, the default).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rfdetr.data.synthetic import SyntheticSpec, write_synthetic_dataset
from rfdetr.data.validate import validate_dataset
from rfdetr.util.checklist import Checklist
from rfdetr.util.environment import check_environment

# The scripts live at the top level of the repository, beside the package.
REPO = Path(__file__).resolve().parents[1]
RESOLUTION = 128
# Fast, deterministic CPU settings shared by both stages (no workers, fixed-size inputs, no TensorBoard).
COMMON = ["--size", "tiny", "--resolution", str(RESOLUTION), "--workers", "0", "--batch", "4", "--accum", "1",
          "--multi_scale", "0", "--tensorboard", "0", "--early_stopping", "0"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo", help="demo folder (dataset, runs and the picture go here)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset and of training")
    parser.add_argument("--stage1_epochs", type=int, default=80)
    parser.add_argument("--stage2_epochs", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=0.5, help="score threshold of the drawn detections")
    return parser


def _run_script(script: str, argv: list[str]) -> None:
    """Run one of the repository's scripts as a user would, stopping the demo if it fails."""
    print(f"[demo] python {script} {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    # One intra-op thread: the tiny model's ops are too small to gain from more, and on a busy CPU the OpenMP threads
    # of every op wait for each other (several times slower).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.run([sys.executable, str(REPO / script), *argv], cwd=REPO, env=env).returncode
    if code != 0:
        raise SystemExit(f"[demo] {script} failed (exit code {code}); see the messages above")
    print(f"[demo] {script}: done in {time.perf_counter() - start:.0f}s", flush=True)


def _only_run(root: Path) -> Path:
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    if len(runs) != 1:
        raise SystemExit(f"[demo] expected one run folder in {root}, found {[p.name for p in runs]}")
    return runs[0]


def main(args: argparse.Namespace) -> int:
    from rfdetr.deploy.visualize import render_detections
    from rfdetr.detr import RFDETR

    out = Path(args.output).resolve()
    dataset = write_synthetic_dataset(out / "dataset", SyntheticSpec(seed=args.seed))
    print(f"[demo] synthetic dataset written to {dataset}")

    print("[demo] validate_setup: environment and dataset (stage 2: masks required)")
    checks = Checklist()
    check_environment(checks, out)
    validate_dataset(dataset, checks, stage=2)
    checks.summarize()
    if checks.failed:
        print("[demo] validation failed; see the FAIL lines above", file=sys.stderr)
        return 1

    # Every run of the demo starts from scratch, so the folders below hold exactly one run each.
    for name in ("stage1", "stage2"):
        shutil.rmtree(out / name, ignore_errors=True)
    seed = ["--seed", str(args.seed), "--dataset", str(dataset)]
    stage1 = [*COMMON, *seed, "--output", str(out / "stage1"), "--pretrained", "none", "--epochs",
              str(args.stage1_epochs), "--lr", "2e-3", "--lr_encoder", "2e-3", "--augment", "0", "--run_test", "0"]
    _run_script("train_detector_stage1.py", stage1)
    stage1_run = _only_run(out / "stage1")

    shrunk = stage1_run / "checkpoint_3class.pth"
    surgery = ["--in_ckpt", str(stage1_run / "checkpoint_best_total.pth"), "--out_ckpt", str(shrunk), "--dataset",
               str(dataset), "--force"]
    _run_script("shrink_head.py", surgery)

    stage2 = [*COMMON, *seed, "--output", str(out / "stage2"), "--stage1_run", str(stage1_run), "--checkpoint",
              str(shrunk), "--epochs", str(args.stage2_epochs), "--seg_lr", "2e-3", "--augment", "0",
              "--cache_features"]
    _run_script("train_seg_stage2.py", stage2)
    stage2_run = _only_run(out / "stage2")

    class RFDETRTiny(RFDETR):
        size = "tiny"  # the demo's configuration; the preset classes (RFDETRNano ...) work the same way

    model = RFDETRTiny(pretrain_weights=stage2_run / "checkpoint_best_total.pth", resolution=RESOLUTION, masks=True)
    test_image = sorted((dataset / "test").glob("*.png"))[0]
    image = np.asarray(Image.open(test_image).convert("RGB"))
    detections = model.predict(image, threshold=args.threshold)
    picture = out / "prediction.png"
    Image.fromarray(render_detections(image, detections)).save(picture)
    print(f"[demo] predict on {test_image.name}: {len(detections)} objects "
          + ", ".join(f"{n} {c:.2f} ({int(m.sum())} px)" for n, c, m in
                      zip(detections.class_name, detections.confidence, detections.mask, strict=True)))
    print(f"[demo] picture with boxes and masks: {picture}")
    print(f"[demo] done (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
