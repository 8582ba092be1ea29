"""Environment checks for ``validate_setup.py``: Python, torch, compiled ops, accelerators, libraries, disk."""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import sys
from pathlib import Path

from rfdetr.util.checklist import Checklist

MIN_PYTHON = (3, 10)
MIN_FREE_DISK_GB = 2.0


# Import name -> distribution name, where they differ.
_DISTRIBUTIONS = {"cv2": "opencv-python-headless"}


def _version(module: str) -> str | None:
    """The installed version of ``module``, or None if it cannot be imported."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    try:
        return importlib.metadata.version(_DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(mod, "__version__", "unknown"))


def check_environment(checks: Checklist, output_dir: str | Path = "runs") -> None:
    """Report on everything training needs; optional pieces are WARN, required ones FAIL."""
    py = sys.version_info
    if py[:2] >= MIN_PYTHON:
        checks.passed(f"Python {py.major}.{py.minor}.{py.micro}")
    else:
        checks.fail(f"Python {py.major}.{py.minor} is too old -> use Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}")

    torch_version = _version("torch")
    tv_version = _version("torchvision")
    if torch_version is None or tv_version is None:
        checks.fail("torch and torchvision must be installed -> pip install -r requirements.txt (or make demo)")
        return
    checks.passed(f"torch {torch_version}, torchvision {tv_version}")
    import torch
    import torchvision

    try:
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
        keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
        assert keep.tolist() == [0]
        checks.passed("torchvision compiled ops work (nms)")
    except (RuntimeError, AssertionError) as e:
        checks.fail(f"torchvision's compiled ops fail ({e}) -> install a torchvision built for torch {torch_version}")

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        checks.passed(f"CUDA {torch.version.cuda}: {names}")
        bf16 = torch.cuda.is_bf16_supported()
        checks.info(f"bfloat16 AMP {'supported' if bf16 else 'not supported: training uses float16 AMP'}")
    else:
        checks.info(f"no CUDA device: training runs on the CPU ({torch.get_num_threads()} threads), float32")

    for module, why in (("pycocotools", "masks and COCO evaluation"), ("scipy", "Hungarian matching"),
                        ("tensorboard", "run logs"), ("cv2", "drawing predictions"), ("tqdm", "progress bars")):
        version = _version(module)
        if version is None:
            checks.fail(f"{module} is missing ({why}) -> pip install -r requirements.txt")
        else:
            checks.passed(f"{module} {version}")
    for module, why in (("wandb", "--wandb logging"), ("onnx", "ONNX export"), ("onnxruntime", "running ONNX files")):
        version = _version(module)
        if version is None:
            checks.warn(f"{module} not installed (optional, for {why}) -> pip install {module}")
        else:
            checks.passed(f"{module} {version} (optional)")

    out = Path(output_dir)
    probe = out if out.exists() else next((p for p in out.resolve().parents if p.exists()), Path("/"))
    free_gb = shutil.disk_usage(probe).free / 1e9
    if free_gb < MIN_FREE_DISK_GB:
        checks.warn(f"only {free_gb:.1f} GB free under {out} -> checkpoints need ~0.5 GB per run; free some space")
    else:
        checks.passed(f"{free_gb:.0f} GB free under {out}")
