"""The checks of tools/gpu_check.sh, after its install step: the ``gpu`` tests, then timed stage-1 / stage-2 steps.

    python tools/gpu_check.py                 # what tools/gpu_check.sh runs in its venv
    python tools/gpu_check.py --bench_steps 5 # shorter timing runs

Prints one line per check, ``PASS`` / ``FAIL`` / ``SKIP`` with a reason or the measured numbers, and exits 1 when any
check failed (0 otherwise). Without CUDA every CUDA check is SKIP: the ``gpu`` tests are still collected and run once,
and must all skip with a reason (so CI exercises this script and the tests' skip logic).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Check:
    """One line of the summary."""

    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.status:4}  {self.name:<44} {self.seconds:6.1f}s  {self.detail}"


# name -> pytest selection (the gpu-marked tests of each check)
PYTEST_CHECKS: dict[str, list[str]] = {
    "CUDA vs CPU forward, float32, TF32 off": ["tests/gpu/test_cuda.py", "-k", "forward"],
    "AMP bf16 + fp16 steps, every training mode": ["tests/train/test_amp.py"],
    "DDP over NCCL under torchrun": ["tests/gpu/test_cuda.py", "-k", "ddp"],
    "predict and export from a CUDA model": ["tests/gpu/test_cuda.py", "-k", "predict"],
}


def _counts(output: str) -> dict[str, int]:
    """pytest's final counts (``3 passed, 1 skipped in 2.1s``) as {"passed": 3, "skipped": 1}."""
    counts: dict[str, int] = {}
    for line in output.splitlines()[::-1]:
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", line)
        if found:
            for number, kind in found:
                counts[kind.rstrip("s") if kind.startswith("error") else kind] = int(number)
            break
    return counts


def _skip_reasons(output: str) -> list[str]:
    """The reasons of ``-rs`` lines (``SKIPPED [2] tests/x.py:12: needs CUDA``)."""
    return sorted({m.group(1).strip() for m in re.finditer(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", output, re.M)})


def run_pytest(selection: list[str], python: str, timeout: float) -> tuple[str, str, str]:
    """Run the ``gpu``-marked tests of ``selection``: (status, detail, full output)."""
    cmd = [python, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider", *selection]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        return "FAIL", f"timed out after {timeout:.0f}s (a hang?)", str(err.stdout or "")
    output = done.stdout + done.stderr
    return (*verdict(done.returncode, output), output)


def verdict(returncode: int, output: str) -> tuple[str, str]:
    """(status, detail) of a ``pytest -q -rs`` run: PASS when tests passed, SKIP when every selected test skipped
    (the reasons as detail), FAIL otherwise (failures, errors, or nothing selected)."""
    counts = _counts(output)
    ran = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("error", 0)
    if returncode == 0 and counts.get("passed", 0) > 0:
        return "PASS", f"{counts['passed']} passed"
    if returncode == 0 and ran == 0 and counts.get("skipped", 0) > 0:
        return "SKIP", "; ".join(_skip_reasons(output)) or "skipped"
    if returncode == 5:
        return "FAIL", "no gpu-marked test selected"
    return "FAIL", f"pytest exit {returncode}: {counts}"


def run_bench(stage: int, python: str, steps: int, timeout: float) -> tuple[str, str, str]:
    cmd = [python, str(REPO / "tools" / "gpu_bench.py"), "--stage", str(stage), "--steps", str(steps)]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "FAIL", f"timed out after {timeout:.0f}s", ""
    output = done.stdout + done.stderr
    if done.returncode != 0:
        return "FAIL", f"exit {done.returncode}: {output.strip().splitlines()[-1] if output.strip() else ''}", output
    return "PASS", done.stdout.strip().splitlines()[-1], output


def cuda_summary() -> tuple[bool, str]:
    """(CUDA usable, a description: GPU, torch / CUDA versions, bf16 support, or why not)."""
    import torch

    if not torch.cuda.is_available():
        return False, f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})"
    name = torch.cuda.get_device_name(0)
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    bf16 = "bf16 AMP" if torch.cuda.is_bf16_supported() else "fp16 AMP (no bf16)"
    return True, f"{name}, {memory:.0f} GiB, {torch.cuda.device_count()} GPU(s), torch {torch.__version__} " \
                 f"CUDA {torch.version.cuda}, {bf16}"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default=sys.executable, help="interpreter of the venv to test with")
    parser.add_argument("--bench_steps", type=int, default=30, help="timed steps per benchmark")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per check before it fails as a hang")
    parser.add_argument("--log", default=None, help="append every check's full output to this file")
    return parser


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYTHONPATH", str(REPO))
    checks: list[Check] = []
    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115 (closed below)

    def record(name: str, start: float, status: str, detail: str, output: str = "") -> None:
        checks.append(Check(name, status, detail, time.perf_counter() - start))
        print(checks[-1].line(), flush=True)
        if log is not None:
            log.write(f"===== {status} {name}\n{output}\n")

    start = time.perf_counter()
    try:
        has_cuda, description = cuda_summary()
    except ImportError as err:  # the interpreter has no torch: one FAIL line, not a traceback
        record("CUDA device", start, "FAIL", f"{sys.executable} cannot import torch ({err}): install first "
                                             "(tools/gpu_check.sh without --skip-install, or make install)")
        return 1
    record("CUDA device", start, "PASS" if has_cuda else "SKIP", description)
    if has_cuda:
        for name, selection in PYTEST_CHECKS.items():
            start = time.perf_counter()
            record(name, start, *run_pytest(selection, args.python, args.timeout))
        for stage in (1, 2):
            start = time.perf_counter()
            record(f"stage-{stage} speed, nano 384 px batch 4", start,
                   *run_bench(stage, args.python, args.bench_steps, args.timeout))
    else:
        # One run over every gpu-marked test: each must skip, with a reason.
        start = time.perf_counter()
        selection = sorted({s[0] for s in PYTEST_CHECKS.values()})
        status, detail, output = run_pytest(selection, args.python, args.timeout)
        if status == "PASS":  # gpu tests passed without CUDA: their skip condition is wrong
            status, detail = "FAIL", f"gpu tests ran without CUDA ({detail})"
        for name in PYTEST_CHECKS:
            record(name, start, status, detail, output)
            start = time.perf_counter()
        for stage in (1, 2):
            record(f"stage-{stage} speed, nano 384 px batch 4", time.perf_counter(), "SKIP", "no CUDA device")
    if log is not None:
        log.close()
    failed = [c.name for c in checks if c.status == "FAIL"]
    print(f"gpu_check: {len(checks)} checks, {sum(c.status == 'PASS' for c in checks)} passed, "
          f"{sum(c.status == 'SKIP' for c in checks)} skipped, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
