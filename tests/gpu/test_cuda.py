"""CUDA checks (``-m gpu``; tools/gpu_check.sh runs them on a machine with an NVIDIA GPU, CI skips them).

- the float32 forward on CUDA (TF32 off) against the CPU within the float32 error model of tests/tolerances.py;
- DDP over NCCL under ``torchrun`` (tests/gpu/ddp_nccl_worker.py; 2 processes when 2 GPUs are there);
- predict and export from a model that lives on CUDA.

The mixed-precision training of every mode on CUDA is tests/train/test_amp.py's ``cuda`` parameter.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from rfdetr.detr import load_model
from tests.deploy.models import image, tiny_detector, tiny_segmenter
from tests.tolerances import float32_tolerance, score_bound

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs an NVIDIA GPU with CUDA (tools/gpu_check.sh runs it)")]


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    """Full float32 matmuls and convolutions: TF32 keeps 11 bits, far outside a float32 error model."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("build", [tiny_detector, tiny_segmenter], ids=["detector", "segmenter"])
def test_cuda_forward_matches_cpu(build) -> None:  # noqa: ANN001
    model = build().model.eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    tol = float32_tolerance(model, pixels)
    with torch.no_grad():
        cpu = model.forward_export(pixels)
        cuda = copy.deepcopy(model).cuda().forward_export(pixels.cuda())
    for name, a, b, bound in zip(("boxes", "logits", "masks"), cpu, cuda, (tol.boxes, tol.logits, tol.masks),
                                 strict=False):
        diff = float((a - b.cpu()).abs().max())
        print(f"{build.__name__} {name}: CUDA vs CPU {diff:.3g} (bound {bound:.3g})")
        assert diff <= bound, f"{name}: {diff} > {bound}"


def test_ddp_over_nccl_with_torchrun(four_images: Path, tmp_path: Path) -> None:
    procs = 2 if torch.cuda.device_count() >= 2 else 1
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           str(REPO / "tests" / "gpu" / "ddp_nccl_worker.py"), str(four_images), str(tmp_path / "runs")]
    # A hang (the failure NCCL is known for) must fail the check, not stall it.
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    print(done.stdout[-3000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DDP float16 2 steps" in done.stdout and "stage-1 script exit 0" in done.stdout
    assert list((tmp_path / "runs").glob("*/checkpoint_best_total.pth"))


def _sorted_scores(detections) -> np.ndarray:  # noqa: ANN001
    return np.sort(np.asarray(detections.confidence, dtype=np.float64))[::-1]


def test_predict_and_export_from_a_cuda_model(tiny_stage2_checkpoint: Path, tmp_path: Path) -> None:
    cpu = load_model(tiny_stage2_checkpoint, size="tiny", device="cpu")
    cuda = load_model(tiny_stage2_checkpoint, size="tiny", device="cuda")
    picture = image(70, 90, seed=1)
    pixels = torch.randn(1, 3, cpu.resolution, cpu.resolution, generator=torch.Generator().manual_seed(6))
    bound = score_bound(float32_tolerance(cpu.model, pixels).logits)
    a, b = cpu.predict(picture, threshold=0.0), cuda.predict(picture, threshold=0.0)
    # The k largest scores, sorted, move by at most the largest change of any one score.
    sa, sb = _sorted_scores(a), _sorted_scores(b)
    assert len(sa) == len(sb) and np.abs(sa - sb).max() <= bound, np.abs(sa - sb).max()
    assert b.mask is not None and b.mask.shape[1:] == (70, 90)
    path = cuda.export(tmp_path / "onnx", format="onnx")
    assert path.is_file()
    assert next(cuda.model.parameters()).device.type == "cuda"  # exporting did not move the user's model
    again = _sorted_scores(cuda.predict(picture, threshold=0.0))
    assert np.array_equal(again, sb) or np.abs(again - sb).max() <= bound
