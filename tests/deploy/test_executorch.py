"""ExecuTorch's own behaviour: its refusal of foreign files, its atomic program + metadata pair, its threadpool.

That its files match PyTorch (detection, segmentation, stage 2) is the contract test's (tests/deploy/test_contract.py).
Lowering to XNNPACK takes minutes even for the tiny models (ExecuTorch's Python graph passes), so each file is
exported once per session (tests/deploy/conftest.py ``exported``); the module is marked ``slow``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.importorskip("executorch", reason="ExecuTorch export tests need executorch (pip install executorch==1.5.1)")

from rfdetr.deploy import load  # noqa: E402
from rfdetr.detr import RFDETR  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def detector_pte(exported: Callable[[str, str], Path]) -> Path:
    return exported("detector", "executorch")


def test_load_rejects_foreign_and_broken_files(detector_pte: Path, tmp_path: Path) -> None:
    """Beyond the contract's garbage and truncated files (refused by the header check before the runtime, which
    aborts the process on foreign files): the runtime's own message, and a program whose metadata was not copied."""
    garbage = tmp_path / "garbage.pte"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match=f"^{garbage}: the ExecuTorch runtime cannot load it as a program"):
        load(garbage)
    # A good program whose metadata JSON was not copied along.
    lonely = tmp_path / "lonely.pte"
    lonely.write_bytes(detector_pte.read_bytes())
    with pytest.raises(ValueError, match=f"^{lonely}: its metadata file .*lonely.pte.json is missing"):
        load(lonely)


def test_failed_export_leaves_no_files(detector: RFDETR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The program is written, then the metadata write fails: neither file is left (lowering is faked: it is slow)."""
    import executorch.exir

    from rfdetr.deploy.export.formats import executorch as et_format

    class Lowered:
        def to_executorch(self) -> object:
            return type("Program", (), {"buffer": b"\0" * 64})()

    def fail(path: object, metadata: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(torch.export, "export", lambda *args, **kwargs: None)
    monkeypatch.setattr(executorch.exir, "to_edge_transform_and_lower", lambda *args, **kwargs: Lowered())
    monkeypatch.setattr(et_format, "write_sidecar", fail)
    with pytest.raises(OSError, match="No space left"):
        detector.export(tmp_path, format="executorch")
    assert list(tmp_path.iterdir()) == []


_THREADPOOL_SCRIPT = """
import logging, sys
import numpy as np
from executorch.extension.pybindings import portable_lib
from rfdetr.deploy.export.formats.executorch import Session
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
first = Session(sys.argv[1], threads=1)
print("pool", portable_lib._threadpool_get_thread_count())
second = Session(sys.argv[1], threads=2)
print("pool", portable_lib._threadpool_get_thread_count())
pixels = np.random.default_rng(0).random(first.input_shape, dtype=np.float32)
a, b = first.run(pixels), second.run(pixels)
assert all(np.array_equal(x, y) for x, y in zip(a, b))
print("ran both")
"""


def test_threadpool_is_sized_before_loading_and_never_under_a_loaded_program(detector_pte: Path) -> None:
    """XNNPACK binds the pool a program is loaded with; resizing it afterwards crashed the next execute() (a segfault
    on a 2-core AVX512 host). Run in a child process, so a regression fails this test instead of killing pytest."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _THREADPOOL_SCRIPT, str(detector_pte)], capture_output=True,
                            text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-2000:]}"
    lines = result.stdout.splitlines()
    assert lines.count("pool 1") == 2 and lines[-1] == "ran both", result.stdout
    assert any("1 program(s) are loaded on 1 threads; threads=2 ignored" in line for line in lines), result.stdout
