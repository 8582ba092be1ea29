"""Every training mode through the mixed-precision path CUDA takes, run on the CPU.

``--amp_dtype bfloat16`` / ``float16`` make :func:`rfdetr.train.optim.autocast_dtype` pick that dtype on the CPU as it
picks it on CUDA, so the same ``fit`` -> ``train_one_epoch`` code runs: ``torch.autocast`` around forward and loss,
the GradScaler for float16 (unscaled before clipping, its state in the checkpoint and restored on resume), EMA,
evaluation under autocast, checkpoint and resume. Per mode (stage 1; stage 2 without and with the feature cache;
single stage) and dtype: the first step's loss is within :func:`tests.tolerances.amp_loss_rtol` of float32's on the
same weights and batch, no step is skipped, the trained weights change, the weights and EMA stay float32, and the run
resumes.

The same test runs on CUDA (``-m gpu``; tools/gpu_check.sh), where the float32 reference is computed with TF32 off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import train_detector_stage1
import train_seg_single_stage
import train_seg_stage2
from rfdetr.checkpoint import load_checkpoint_file
from rfdetr.losses.mask_logits import point_sample
from rfdetr.losses.matcher import HungarianMatcher
from rfdetr.train import fit as fit_module
from rfdetr.train.optim import autocast_dtype
from rfdetr.util.loggers import read_jsonl
from tests.run_checks import assert_resume_matches_straight_run
from tests.tolerances import BFLOAT16_UNIT_ROUNDOFF, FLOAT16_UNIT_ROUNDOFF, amp_loss_rtol

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--workers", "0", "--batch", "2", "--accum", "1", "--multi_scale", "0", "--augment", "0",
        "--seed", "3", "--tensorboard", "0", "--early_stopping", "0", "--checkpoint_interval", "1", "--use_ema", "1"]
UNIT_ROUNDOFF = {"bfloat16": BFLOAT16_UNIT_ROUNDOFF, "float16": FLOAT16_UNIT_ROUNDOFF}
DTYPES = tuple(UNIT_ROUNDOFF)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA (tools/gpu_check.sh runs it)")])]


def _stage1_run(root: Path) -> Path:
    (run_dir,) = (root / "stage1").iterdir()
    return run_dir


# mode -> (script, its flags given the folder holding the float32 stage-1 run). Stage 2 uses MaskHeadNano (the
# factorised logits of SparseMaskLogits) without the cache, and MaskHeadDynamic (its stored pixels, per-query MLPs
# and grid_sample) with it.
MODES: dict[str, tuple[Any, Callable[[Path], list[str]]]] = {
    "stage1": (train_detector_stage1, lambda root: ["--size", "tiny", "--pretrained", "none"]),
    "stage2": (train_seg_stage2, lambda root: ["--size", "tiny", "--stage1_run", str(_stage1_run(root)),
                                               "--mask_head", "nano"]),
    "stage2_cache": (train_seg_stage2, lambda root: ["--size", "tiny", "--stage1_run", str(_stage1_run(root)),
                                                     "--mask_head", "dynamic", "--cache_features"]),
    "single": (train_seg_single_stage, lambda root: ["--size", "seg-tiny", "--pretrained", "none"]),
}


class StepLog:
    """Records every optimizer step's logged values (``loss`` is the loss before that step's update)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def wrap(self, train_one_epoch: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, on_step: Callable[[int, dict[str, float]], None] | None = None, **kwargs: Any) -> Any:
            def record(step: int, logs: dict[str, float]) -> None:
                self.steps.append(dict(logs))
                if on_step is not None:
                    on_step(step, logs)

            return train_one_epoch(*args, on_step=record, **kwargs)

        return wrapped


def run_script(script: Any, dataset: Path, output: Path, *extra: str) -> list[dict[str, float]]:
    """Run a training script's ``main``; returns its per-step logs."""
    log = StepLog()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit_module, "train_one_epoch", log.wrap(fit_module.train_one_epoch))
        argv = [*FAST, "--dataset", str(dataset), "--output", str(output), *extra]
        assert script.main(script.get_args_parser().parse_args(argv)) == 0
    return log.steps


@pytest.fixture(scope="module")
def runs(four_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A float32 stage-1 run (1 epoch) under ``<root>/stage1``: the detector of the stage-2 modes."""
    root = tmp_path_factory.mktemp("amp")
    run_script(train_detector_stage1, four_images, root / "stage1", "--device", "cpu", "--size", "tiny",
               "--pretrained", "none", "--epochs", "1")
    yield root


def test_autocast_dtype_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, amp=True) is None  # CPU training stays float32 unless asked
    assert autocast_dtype(cpu, amp=True, dtype="bfloat16") is torch.bfloat16
    assert autocast_dtype(cuda, amp=True, dtype="float16") is torch.float16
    assert autocast_dtype(cuda, amp=False, dtype="bfloat16") is None  # --no_amp wins


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """float32 matmuls and convolutions in full float32 on CUDA (TF32 rounds their inputs to 11 bits: as coarse as
    float16, so it would not be a float32 reference)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", list(MODES))
def test_mixed_precision_training(mode: str, device: str, runs: Path, four_images: Path) -> None:
    script, flags = MODES[mode]
    extra = [*flags(runs), "--device", device]
    reference = run_script(script, four_images, runs / f"{mode}_{device}_float32", *extra, "--epochs", "1")
    for dtype in DTYPES:
        out = runs / f"{mode}_{device}_{dtype}"
        steps = run_script(script, four_images, out, *extra, "--epochs", "1", "--amp_dtype", dtype)
        # Same seed, weights and batch: the first step's loss differs from float32's by rounding only.
        bound = amp_loss_rtol(UNIT_ROUNDOFF[dtype])
        rel = abs(steps[0]["loss"] - reference[0]["loss"]) / abs(reference[0]["loss"])
        print(f"{mode} {dtype}: first-step loss relative difference {rel:.2e} (bound {bound:.2e})")
        assert rel <= bound, f"{mode} {dtype}: first-step loss {steps[0]['loss']} vs float32 {reference[0]['loss']}"
        assert all(math.isfinite(v) for s in steps for v in s.values()), f"{mode} {dtype}: {steps}"
        (run_dir,) = out.iterdir()
        first = load_checkpoint_file(run_dir / "checkpoint0000.pth")
        # Resume for a second epoch, still in the same precision.
        run_script(script, four_images, runs / f"{mode}_{device}_{dtype}_unused", *extra, "--epochs", "2",
                   "--amp_dtype", dtype, "--resume", str(run_dir / "checkpoint.pth"))
        records = read_jsonl(run_dir / "log.jsonl")
        assert [r["epoch"] for r in records] == [0, 1]
        assert all(r["train_skipped_steps"] == 0 and math.isfinite(r["train_loss"]) for r in records), records
        last = load_checkpoint_file(run_dir / "checkpoint.pth")
        assert last["epoch"] == 1
        changed = [k for k, v in last["model"].items()
                   if v.is_floating_point() and not torch.equal(v, first["model"][k])]
        assert changed, f"{mode} {dtype}: the resumed epoch changed no weight"
        for key in ("model", "ema_model"):
            dtypes = {v.dtype for v in last[key].values() if v.is_floating_point()}
            assert dtypes == {torch.float32}, f"{mode} {dtype}: {key} holds {dtypes}"
        for state in last["optimizer"]["state"].values():
            assert state["exp_avg"].dtype == torch.float32 and torch.isfinite(state["exp_avg_sq"]).all()
        if dtype == "float16":
            scale = last["scaler"]["scale"]
            assert math.isfinite(scale) and scale > 0
        else:
            assert "scaler" not in last  # bfloat16 has float32's range: no loss scaling


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_point_sample_reads_low_precision_maps_at_float32_coordinates(dtype: torch.dtype) -> None:
    """A map whose value is its column index (integers up to 255: exact in bf16 and fp16) read between pixel centres:
    bilinear sampling returns the continuous column ``x * W - 0.5``. With the coordinates rounded to the map's dtype
    (as before the fix) the error was 0.13 column (bf16) and 0.005 (fp16); float32 coordinates leave float32
    rounding (bound: a few float32 ulps of x * W <= 256)."""
    width = 256
    ramp = torch.arange(width, dtype=torch.float32).expand(1, 1, 4, width).to(dtype)
    x = (torch.arange(0, width - 1, 7, dtype=torch.float32) + 0.5 + 0.37) / width
    points = torch.stack([x, torch.full_like(x, 0.5)], dim=-1)[None]  # [1, P, 2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = point_sample(ramp, points)[0, 0]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x * width - 0.5, rtol=0, atol=width * 2**-20)


@pytest.mark.parametrize("scale", [40.0, 100.0])
def test_matcher_mask_costs_are_float32_under_float16_autocast(scale: float) -> None:
    """4096 points (a 256 x 256 mask map) of logits uniform in +-scale: each pairwise BCE sum before its division by P
    is ~2e4 (scale 40: float16 rounds it, 6e-4 relative before the fix) or ~5e4 per half (scale 100: inf before the
    fix). The costs must be finite and equal the float32 ones."""
    g = torch.Generator().manual_seed(0)
    logits = torch.rand(1, 6, 256, 256, generator=g) * 2 * scale - scale
    masks = torch.rand(2, 256, 256, generator=g) > 0.5
    outputs = {"pred_logits": torch.randn(1, 6, 3, generator=g), "pred_masks": logits,
               "pred_boxes": torch.rand(1, 6, 4, generator=g) * 0.5 + 0.25}
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.rand(2, 4, generator=g) * 0.5 + 0.25, "masks": masks}]
    matcher = HungarianMatcher(use_masks=True)
    torch.manual_seed(1)
    (reference,) = matcher._mask_costs(outputs, targets)
    torch.manual_seed(1)  # the same random points
    with torch.autocast("cpu", dtype=torch.float16):
        (costs,) = matcher._mask_costs(outputs, targets)
    assert torch.isfinite(costs).all()
    torch.testing.assert_close(costs, reference)


# The GradScaler's first scale here: high enough that the first steps' float16 gradients overflow (the scale then
# halves per skipped step, to 2^16 on this run), so a resume that lost the scaler's state would skip steps again.
INITIAL_SCALE = 2.0**18


def test_float16_resume_with_accumulation_equals_uninterrupted(four_images: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """GradScaler with two micro-batches per step, clipping, skipped overflow steps and EMA: a run resumed after epoch
    0 (scaler state from the checkpoint) ends exactly like the straight run."""
    monkeypatch.setattr(fit_module, "build_grad_scaler", lambda device, dtype: torch.amp.GradScaler(
        device.type, init_scale=INITIAL_SCALE, enabled=dtype == torch.float16))
    args = ["--device", "cpu", "--size", "tiny", "--pretrained", "none", "--accum", "2", "--amp_dtype", "float16",
            "--lr", "5e-4"]
    run_script(train_detector_stage1, four_images, tmp_path / "straight", *args, "--epochs", "2")
    run_script(train_detector_stage1, four_images, tmp_path / "split", *args, "--epochs", "1")
    first = tmp_path / "split" / "detector_tiny_64_1"
    scale = load_checkpoint_file(first / "checkpoint.pth")["scaler"]["scale"]
    assert scale < INITIAL_SCALE  # steps were skipped on overflow: the state to restore is not the initial one
    run_script(train_detector_stage1, four_images, tmp_path / "unused", *args, "--epochs", "2",
               "--resume", str(first / "checkpoint.pth"))
    assert_resume_matches_straight_run(tmp_path / "straight" / "detector_tiny_64_1", first, tmp_path / "unused")
