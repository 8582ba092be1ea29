"""tools/gpu_check.sh on this machine: without CUDA it must reach its summary with every CUDA check SKIP and exit 0;
and its verdicts (PASS / FAIL / SKIP from a pytest run) must be able to come out FAIL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs the real checks (minutes)")
def test_gpu_check_without_cuda_skips_every_cuda_check(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_LOG": str(tmp_path / "gpu_check.log")}
    done = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--skip-install"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    checks = [line for line in lines if line[:4] in ("PASS", "FAIL", "SKIP")]
    names = [*gpu_check.PYTEST_CHECKS, "CUDA device", "stage-1 speed", "stage-2 speed", "install"]
    assert all(any(name in line for line in checks) for name in names), lines
    assert all(line.startswith("SKIP") for line in checks), lines
    # The gpu tests were collected and skipped with the reason, not silently absent.
    assert sum("needs an NVIDIA GPU with CUDA" in line for line in checks) == len(gpu_check.PYTEST_CHECKS)
    assert "0 failed" in lines[-2] and "gpu_check.sh:" in lines[-1]


@pytest.mark.parametrize("returncode, output, expected", [
    (0, "..\n2 passed, 3 deselected in 1.2s\n", ("PASS", "2 passed")),
    (1, ".F\n1 failed, 1 passed in 1.0s\n", ("FAIL", "pytest exit 1: {'failed': 1, 'passed': 1}")),
    (0, "ss\nSKIPPED [2] tests/gpu/test_cuda.py:30: needs CUDA\n2 skipped in 0.5s\n", ("SKIP", "needs CUDA")),
    (0, "s.\nSKIPPED [1] tests/x.py:3: needs CUDA\n1 passed, 1 skipped in 0.5s\n", ("PASS", "1 passed")),
    (5, "no tests ran in 0.1s\n", ("FAIL", "no gpu-marked test selected")),
    (1, "E\n1 error in 0.3s\n", ("FAIL", "pytest exit 1: {'error': 1}")),
])
def test_verdicts(returncode: int, output: str, expected: tuple[str, str]) -> None:
    assert gpu_check.verdict(returncode, output) == expected


def test_a_failing_gpu_test_fails_the_check(tmp_path: Path) -> None:
    test = tmp_path / "test_fake.py"
    test.write_text("import pytest\n\n\n@pytest.mark.gpu\ndef test_fake():\n    assert False\n")
    status, _, output = gpu_check.run_pytest([str(test)], sys.executable, timeout=120)
    assert status == "FAIL", output
