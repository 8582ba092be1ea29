"""A guard against implicit CPU tensors: factory calls in the ``rfdetr`` package that give no ``device``.

On a CUDA run, ``torch.zeros(n)`` inside a loss makes a CPU tensor; mixing it with the CUDA outputs raises (or, for
index tensors, silently copies and synchronises at every use). On the CPU-only test machines every tensor is a CPU
tensor, so the mistake cannot show as a device mismatch there. :class:`ImplicitDeviceGuard` catches it anyway: while
active it records every call of a tensor factory (``torch.tensor``, ``zeros``, ``arange``, ``as_tensor``, ``rand``, ...:
the functions ``torch.set_default_device`` redirects) made directly from a file of the ``rfdetr`` package without a
``device=`` argument. ``*_like`` and ``Tensor.new_*`` take their input's device and are always fine.

Usage::

    with ImplicitDeviceGuard() as guard:
        ...  # a training step, post-processing
    assert not guard.violations, guard.report()
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

PACKAGE = Path(__file__).resolve().parents[1] / "rfdetr"
TORCH_DIR = Path(torch.__file__).resolve().parent


class ImplicitDeviceGuard(TorchFunctionMode):
    """Records ``file:line: torch.<factory>`` for factory calls from ``rfdetr`` without ``device=``.

    Attributes:
        violations: the offending call sites, in call order (deduplicated).
        calls: factory calls from ``rfdetr`` seen (with or without a device), to show the guard saw the code at all.
    """

    def __init__(self) -> None:
        super().__init__()
        self.factories = _device_constructors()
        self.violations: list[str] = []
        self.calls = 0
        self.paused = False  # set while code that is meant to make CPU tensors runs (dataset decoding)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.factories and not self.paused:
            site = _caller_in_package()
            if site is not None:
                self.calls += 1
                if kwargs.get("device") is None:
                    entry = f"{site}: torch.{func.__name__} without device="
                    if entry not in self.violations:
                        self.violations.append(entry)
        return func(*args, **kwargs)

    def report(self) -> str:
        return "tensors created without an explicit device (pass device=<input>.device, or use new_* / *_like):\n" + \
            "\n".join(self.violations)


def _caller_in_package() -> str | None:
    """``path:line`` of the first frame outside torch and this file, if it lies in the rfdetr package."""
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if path != Path(__file__).resolve() and not path.is_relative_to(TORCH_DIR):
            if path.is_relative_to(PACKAGE):
                return f"{path.relative_to(PACKAGE.parent)}:{frame.f_lineno}"
            return None
        frame = frame.f_back
    return None
