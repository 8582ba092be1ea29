"""The command lines' engine flags (``--engine --int8 --calibration --calibration_images --threads``), shared by
``python -m rfdetr.predict`` and ``python -m rfdetr.evaluate``.

    python -m rfdetr.predict --weights checkpoint.pth --source clip.mp4 --engine auto --int8 --calibration data/

A checkpoint then runs where :func:`rfdetr.deploy.runtime.optimize.optimize_model` puts it (the code and the cache
behind ``RFDETR.optimize_for_inference``): ``torch`` (the default) is the eager PyTorch model as loaded; a runtime
engine whose packages are missing falls back to it with one line giving the pip command. An exported file given as
``--weights`` already has its runtime: ``--engine`` may only name that one, and ``--int8`` is refused (export an INT8
file with ``python -m rfdetr.export --int8``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfdetr.deploy.export.formats import format_for_file
from rfdetr.deploy.runtime.optimize import ENGINE_CHOICES, ENGINES, pick_engine

__all__ = ["EngineChoice", "add_engine_args"]


def add_engine_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the ``engine`` argument group to a command's parser (read back with :meth:`EngineChoice.from_args`)."""
    group = parser.add_argument_group(
        "engine", "for a checkpoint as --weights: its exported file is built once and cached beside it in "
                  ".rfdetr_optimized/, keyed by the weights' hash and the settings (shared with "
                  "optimize_for_inference)")
    group.add_argument(
        "--engine", choices=ENGINE_CHOICES, default=None,
        help="where the network runs: torch (default: the PyTorch model as loaded), a runtime, or auto: on a CPU "
             "every installed runtime (and PyTorch, without --int8) is timed on this host and the fastest used (the "
             "pick is cached too); on a GPU, PyTorch. A runtime that is not installed falls back to PyTorch")
    group.add_argument("--int8", action="store_true",
                       help="full-integer INT8 file calibrated on --calibration (needs a runtime --engine)")
    group.add_argument("--calibration", default=None, metavar="DIR",
                       help="with --int8: a dataset folder or a folder of images to calibrate on")
    group.add_argument("--calibration_images", "--calibration-images", type=int, default=64, metavar="N",
                       help="with --int8: how many calibration images to use")
    group.add_argument("--threads", type=int, default=None, metavar="N",
                       help="CPU threads of the runtime and of PyTorch (default: their own choice)")
    return group


@dataclass(frozen=True)
class EngineChoice:
    """The engine flags, checked (:meth:`from_args`); :meth:`apply` installs the engine on a loaded model."""

    engine: str | None = None
    int8: bool = False
    calibration: str | None = None
    calibration_images: int = 64
    threads: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineChoice:
        """The flags of :func:`add_engine_args`, checked against each other.

        Raises:
            ValueError: ``--int8`` without ``--calibration`` or without a runtime engine, ``--calibration`` without
                ``--int8``, a count below 1; FileNotFoundError: a ``--calibration`` folder that does not exist.
        """
        choice = cls(args.engine, args.int8, args.calibration, args.calibration_images, args.threads)
        if choice.threads is not None and choice.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {choice.threads}")
        if choice.int8:
            if choice.engine in (None, "torch"):
                raise ValueError("--int8 needs a runtime engine: add --engine auto (or onnxruntime, openvino, "
                                 "tflite); PyTorch runs float32")
            if choice.calibration is None:
                raise ValueError("--int8 needs --calibration DIR: a dataset folder or a folder of images to "
                                 "calibrate the INT8 file on")
            if choice.calibration_images < 1:
                raise ValueError(f"--calibration_images must be >= 1, got {choice.calibration_images}")
            if not Path(choice.calibration).is_dir():
                raise FileNotFoundError(f"--calibration {choice.calibration}: no such folder")
        elif choice.calibration is not None:
            raise ValueError("--calibration is used by --int8 only: add --int8, or leave --calibration out")
        return choice

    def check_exported(self, weights: str | os.PathLike[str]) -> None:
        """Refuse flags that an exported file (already in its runtime) cannot honour.

        Raises:
            ValueError: ``--int8``, or an ``--engine`` other than the file's own.
        """
        fmt = format_for_file(weights)
        own = next((engine for engine, name in ENGINES.items() if name == fmt.name), None)
        if self.int8:
            raise ValueError(f"--int8: {os.fspath(weights)} is already an exported {fmt.name} file; give the "
                             "checkpoint as --weights, or export an INT8 file with python -m rfdetr.export --int8")
        if self.engine is not None and self.engine != own:
            runs = f"runs in {own}" if own is not None else f"runs in the {fmt.name} runtime"
            raise ValueError(f"--engine {self.engine}: {os.fspath(weights)} is already an exported {fmt.name} file "
                             f"(it {runs}); give the checkpoint as --weights to choose an engine, or leave "
                             "--engine out")

    def apply(self, model: Any) -> None:
        """Install the engine on an :class:`rfdetr.detr.RFDETR` (nothing for ``torch``: the eager model as loaded),
        falling back to PyTorch with one warning line when its runtime is not installed."""
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        if self.engine in (None, "torch"):
            return
        # A missing runtime falls back here (its one warning line), to the eager model --engine torch runs.
        if self.engine != "auto" and pick_engine(self.engine, model.device, self.int8, fallback=True) is None:
            return
        model.optimize_for_inference(engine=self.engine, int8=self.int8, calibration=self.calibration,
                                     calibration_images=self.calibration_images, threads=self.threads, fallback=True)
