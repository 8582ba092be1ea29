"""``make demo``: the whole pipeline on the embedded synthetic dataset, on the CPU, in about three minutes.

1. write the synthetic dataset (circles, squares and triangles with polygon, RLE and uncompressed-RLE masks: 96
   training, 16 validation and 16 test images) and check the environment and the dataset (``validate_setup.py``);
2. stage 1: fine-tune the detector (``train_detector_stage1.py``);
3. cut its class heads to the dataset's classes by name (``shrink_head.py --dataset``; here the classes are the same,
   so this only proves the head matches the dataset, as it must before stage 2, and writes no copy);
4. stage 2: train the mask head on the frozen detector (``train_seg_stage2.py --cache_features --mask_head_weights``);
5. copy the stage-2 model to ``{output}/model.pth``, print its COCO scores on the held-out test split, and draw its
   predictions on four test images into ``{output}/prediction.png`` (each image enlarged 3x, so that labels and mask
   edges are visible).

The model is the ``tiny`` test configuration (a 4-block, 96-wide ViT; about 1M parameters) at 192 px, the images'
own size. It starts from ``assets/demo_shapes_tiny.pth`` (the detector) and ``assets/demo_shapes_tiny_mask_head.pth``
(a MaskHeadNano), made as official weights are made (``tools/make_demo_weights.py``: long runs on 1024 other synthetic
images): stage 1 fine-tunes the detector gently on the demo's 96 training images (lr 1e-4), as a user fine-tunes the
official weights on their own data, and stage 2 fine-tunes the mask head on the frozen detector (20 epochs, lr 5e-4).
Starting points this strong are what make the demo right on every host: trained on the 96 images alone, the mask head
fits them (mask IoU 0.90) but not new ones (0.71), and the label of a hard shape flips with the host's rounding.
About 70 s on 2 CPU cores; on 256 fresh images of its generator segm AP50 ~0.93, bbox AP50 ~0.99. ``--from_scratch``
ignores both files: then 5 CPU minutes give a detector that finds the shapes but scores every class about alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rfdetr.data.synthetic import SyntheticSpec, write_synthetic_dataset
from rfdetr.data.validate import validate_dataset
from rfdetr.util.atomic import atomic_path
from rfdetr.util.checklist import Checklist
from rfdetr.util.environment import check_environment

# The scripts live at the top level of the repository, beside the package.
REPO = Path(__file__).resolve().parents[1]
# The images' own size: at 160 px a low-contrast rotated square spans ~3 ViT patches and the detector's square / circle
# scores sat within 0.1 of each other, so the label depended on the host's rounding; at 192 px nothing is lost.
RESOLUTION = 192
# The demo's data: 192 px images, shapes 15-30% of the side (2-7 ViT patches: big enough to tell a square from a
# triangle), enough images that the model learns shapes instead of memorising pictures.
DEMO_DATA = SyntheticSpec(splits=(("train", 96), ("valid", 16), ("test", 16)), width=192, height=192, max_objects=3,
                          radius=(0.15, 0.3))
# Fast, deterministic CPU settings shared by both stages (no workers, fixed-size inputs, no TensorBoard); a cosine
# schedule, so that the learning rate is low by the last epochs (the default step schedule drops only at epoch 100).
COMMON = ["--size", "tiny", "--resolution", str(RESOLUTION), "--workers", "0", "--batch", "4", "--accum", "1",
          "--multi_scale", "0", "--tensorboard", "0", "--early_stopping", "0", "--lr_scheduler", "cosine"]
# Stage 2's (epochs, learning rate): a short, gentle fine-tune of the starting mask head, or a new head's longer run.
STAGE2_FINE_TUNE = (20, 5e-4)
STAGE2_NEW_HEAD = (40, 2e-3)
PICTURE_SCALE = 3
MODEL_FILE = "model.pth"
# The demo's starting weights, as official weights are for real data: the tiny detector after a long stage-1 run on
# 1024 other synthetic images (``tools/make_demo_weights.py`` makes it). Without it the demo trains from scratch.
PRETRAINED = REPO / "assets" / "demo_shapes_tiny.pth"
# The demo's starting mask head (MaskHeadNano trained by stage 2 on the same 1024 images), as official segmentation
# weights come with a mask head: 96 images alone teach the head their own shapes, not new ones.
PRETRAINED_MASK_HEAD = REPO / "assets" / "demo_shapes_tiny_mask_head.pth"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo", help="demo folder (dataset, runs and the picture go here)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset and of training")
    parser.add_argument("--stage1_epochs", type=int, default=10, help="stage-1 fine-tuning epochs")
    parser.add_argument("--stage1_lr", type=float, default=1e-4, help="stage-1 fine-tuning learning rate")
    parser.add_argument("--from_scratch", action="store_true", help="ignore the demo's starting weights")
    parser.add_argument("--scratch_epochs", type=int, default=60, help="stage-1 epochs when starting from scratch")
    parser.add_argument("--stage2_epochs", type=int, default=None,
                        help=f"stage-2 epochs (default: {STAGE2_FINE_TUNE[0]} from the starting mask head, "
                             f"{STAGE2_NEW_HEAD[0]} for a new head)")
    parser.add_argument("--stage2_lr", type=float, default=None,
                        help=f"stage-2 (mask head) learning rate (default: {STAGE2_FINE_TUNE[1]:g} from the starting "
                             f"mask head, {STAGE2_NEW_HEAD[1]:g} for a new head)")
    parser.add_argument("--pretrained", default=str(PRETRAINED), help="the detector's starting weights")
    parser.add_argument("--mask_head_weights", default=str(PRETRAINED_MASK_HEAD),
                        help="the mask head's starting weights (a stage-2 checkpoint; 'none': a new head)")
    parser.add_argument("--threshold", type=float, default=0.4, help="score threshold of the drawn detections")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of the training scripts (default: OMP_NUM_THREADS, else 1)")
    return parser


def _run_script(script: str, argv: list[str], threads: int | None = None) -> None:
    """Run one of the repository's scripts as a user would, stopping the demo if it fails."""
    print(f"[demo] python {script} {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    # One intra-op thread by default: the tiny model's ops are too small to gain much from more, and on a busy CPU the
    # OpenMP threads of every op wait for each other (several times slower).
    env = {**os.environ, "OMP_NUM_THREADS": str(threads) if threads else os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.run([sys.executable, str(REPO / script), *argv], cwd=REPO, env=env).returncode
    if code != 0:
        raise SystemExit(f"[demo] {script} failed (exit code {code}); see the messages above")
    print(f"[demo] {script}: done in {time.perf_counter() - start:.0f}s", flush=True)


def _only_run(root: Path) -> Path:
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    if len(runs) != 1:
        raise SystemExit(f"[demo] expected one run folder in {root}, found {[p.name for p in runs]}")
    return runs[0]


def draw_predictions(model: Any, images: list[Path], threshold: float, scale: int = PICTURE_SCALE) -> np.ndarray:
    """The predictions on ``images`` (each enlarged ``scale`` times before predicting, so that masks are drawn at that
    size), side by side in one RGB picture [H * scale, W * scale * n, 3]."""
    from rfdetr.deploy.media.visualize import render_detections

    panels = []
    for path in images:
        with Image.open(path) as pil:
            big = pil.convert("RGB").resize((pil.width * scale, pil.height * scale), Image.Resampling.BICUBIC)
        image = np.asarray(big)
        panels.append(render_detections(image, model.predict(image, threshold=threshold)))
    height = max(p.shape[0] for p in panels)
    gap = np.full((height, 8, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for panel in panels:
        row += [panel, gap]
    return np.concatenate(row[:-1], axis=1)


def main(args: argparse.Namespace) -> int:
    from rfdetr.detr import load_model

    out = Path(args.output).resolve()
    spec = dataclasses.replace(DEMO_DATA, seed=args.seed)
    dataset = write_synthetic_dataset(out / "dataset", spec)
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
    pretrained = Path(args.pretrained)
    if pretrained.is_file() and not args.from_scratch:
        # Every tensor, the projector too (rfdetr's default leaves the official projector out).
        start = ["--pretrained", str(pretrained), "--pretrain_exclude_keys", ""]
        epochs, lr = args.stage1_epochs, args.stage1_lr
    else:
        print(f"[demo] {pretrained} not found (or --from_scratch): stage 1 starts from random weights")
        start, epochs, lr = ["--pretrained", "none"], args.scratch_epochs, 2e-3
    stage1 = [*COMMON, *seed, *start, "--output", str(out / "stage1"), "--epochs", str(epochs), "--lr", str(lr),
              "--lr_encoder", str(lr), "--augment", "1", "--run_test", "0"]
    _run_script("train_detector_stage1.py", stage1, args.threads)
    stage1_run = _only_run(out / "stage1")

    shrunk = stage1_run / "checkpoint_3class.pth"
    shrunk.unlink(missing_ok=True)
    surgery = ["--in_ckpt", str(stage1_run / "checkpoint_best_total.pth"), "--out_ckpt", str(shrunk), "--dataset",
               str(dataset)]
    _run_script("shrink_head.py", surgery)
    if not shrunk.is_file():  # the classes already match: shrink_head.py says so and writes no copy
        shrunk = stage1_run / "checkpoint_best_total.pth"

    head = Path(args.mask_head_weights)
    if head.is_file() and not args.from_scratch:
        head_args, (epochs, lr) = ["--mask_head_weights", str(head)], STAGE2_FINE_TUNE
    else:
        print(f"[demo] {head} not found (or --from_scratch): stage 2 trains a new mask head")
        head_args, (epochs, lr) = [], STAGE2_NEW_HEAD
    epochs = args.stage2_epochs if args.stage2_epochs is not None else epochs
    lr = args.stage2_lr if args.stage2_lr is not None else lr
    stage2 = [*COMMON, *seed, "--output", str(out / "stage2"), "--stage1_run", str(stage1_run), "--checkpoint",
              str(shrunk), "--epochs", str(epochs), "--seg_lr", str(lr), "--augment", "0", "--cache_features",
              "--run_test", "1", *head_args]
    _run_script("train_seg_stage2.py", stage2, args.threads)
    stage2_run = _only_run(out / "stage2")

    # The model every later example uses (predict, export, video): one stable path.
    model_path = out / MODEL_FILE
    with atomic_path(model_path) as tmp:
        shutil.copyfile(stage2_run / "checkpoint_best_total.pth", tmp)
    results = json.loads((stage2_run / "results.json").read_text()).get("test", {})
    if results:
        segm, bbox = results["segm"], results["bbox"]
        print(f"[demo] held-out test split: segm AP50 {segm['mAP50']:.3f}, mAP50:95 {segm['mAP']:.3f}; bbox AP50 "
              f"{bbox['mAP50']:.3f}; per-class segm AP50 "
              + ", ".join(f"{k} {v:.2f}" for k, v in segm["per_class_AP50"].items()))

    model = load_model(model_path, device="cpu")  # the checkpoint records its config: no --size needed
    test_images = sorted(p for p in (dataset / "test").iterdir() if p.suffix in (".png", ".jpg"))[:4]
    picture = out / "prediction.png"
    Image.fromarray(draw_predictions(model, test_images, args.threshold)).save(picture)
    print(f"[demo] model: {model_path}")
    print(f"[demo] predictions on {len(test_images)} test images (enlarged {PICTURE_SCALE}x): {picture}")
    print(f"[demo] next: python -m rfdetr.predict --weights {model_path} --source {dataset / 'test'}")
    print(f"[demo] done (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
