"""No implicit CPU tensors in the code a training step, evaluation and ``predict`` run on the device (losses, matcher,
models, post-processing, batch resize, EMA, feature cache): every factory call there names its input's device.

Each training mode runs one epoch through its script under :class:`tests.device_guard.ImplicitDeviceGuard`; the
dataset's own ``__getitem__`` (decoding files into CPU tensors, where CPU is the input's device) runs unguarded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import train_detector_stage1
import train_seg_single_stage
import train_seg_stage2
from rfdetr.train import fit as fit_module
from tests.device_guard import ImplicitDeviceGuard

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--device", "cpu", "--workers", "0", "--batch", "2", "--accum", "1", "--multi_scale", "0", "--augment", "0",
        "--seed", "3", "--tensorboard", "0", "--early_stopping", "0", "--epochs", "1", "--use_ema", "1"]


class UnguardedLoader:
    """A loader whose batches are produced with the guard off (``len`` and attributes pass through)."""

    def __init__(self, loader: Any, guard: ImplicitDeviceGuard) -> None:
        self.loader, self.guard = loader, guard

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.loader)
        while True:
            self.guard.paused = True
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.guard.paused = False
            yield batch


def guarded(function: Callable[..., Any], guard: ImplicitDeviceGuard, loader_index: int) -> Callable[..., Any]:
    """``function`` (train_one_epoch / evaluate) run under ``guard``, its loader argument unguarded."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        args = list(args)
        args[loader_index] = UnguardedLoader(args[loader_index], guard)
        with guard:
            return function(*args, **kwargs)

    return wrapped


def run_guarded(script: Any, dataset: Path, output: Path, *extra: str) -> ImplicitDeviceGuard:
    guard = ImplicitDeviceGuard()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit_module, "train_one_epoch", guarded(fit_module.train_one_epoch, guard, 2))
        mp.setattr(fit_module, "evaluate", guarded(fit_module.evaluate, guard, 3))
        argv = [*FAST, "--dataset", str(dataset), "--output", str(output), *extra]
        assert script.main(script.get_args_parser().parse_args(argv)) == 0
    return guard


@pytest.fixture(scope="module")
def stage1_run(four_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage1")
    # Multi-scale on: the per-step batch resize runs on the device too.
    guard = run_guarded(train_detector_stage1, four_images, out, "--size", "tiny", "--pretrained", "none",
                        "--multi_scale", "1")
    assert not guard.violations, guard.report()
    (run_dir,) = out.iterdir()
    return run_dir


def test_stage1_step_and_evaluation(stage1_run: Path) -> None:
    assert (stage1_run / "checkpoint.pth").is_file()  # the fixture ran stage 1 under the guard


@pytest.mark.parametrize("head, cache", [("nano", False), ("full", False), ("dynamic", True)])
def test_stage2_step_and_evaluation(head: str, cache: bool, stage1_run: Path, four_images: Path,
                                    tmp_path: Path) -> None:
    extra = ["--size", "tiny", "--stage1_run", str(stage1_run), "--mask_head", head, "--eval_interval", "1"]
    guard = run_guarded(train_seg_stage2, four_images, tmp_path, *extra, *(["--cache_features"] if cache else []))
    assert guard.calls > 0 and not guard.violations, guard.report()


def test_single_stage_step_and_evaluation(four_images: Path, tmp_path: Path) -> None:
    guard = run_guarded(train_seg_single_stage, four_images, tmp_path, "--size", "seg-tiny", "--pretrained", "none")
    assert guard.calls > 0 and not guard.violations, guard.report()


def test_predict() -> None:
    """The user API, all of it guarded: image loading, resize, normalise, forward, post-processing with masks."""
    from tests.deploy.models import image, tiny_segmenter

    model = tiny_segmenter()
    with ImplicitDeviceGuard() as guard:
        model.predict([image(70, 90, seed=1), image(50, 60, seed=2)], threshold=0.0)
    assert guard.calls > 0 and not guard.violations, guard.report()


def test_the_guard_catches_an_implicit_cpu_tensor() -> None:
    """The guard itself can fail: a factory call without ``device`` made from rfdetr code is reported."""
    from rfdetr.losses import functional

    source = "def _probe(x):\n    return x + torch.zeros(x.shape)\n"
    namespace = {"torch": torch, "__name__": functional.__name__}
    exec(compile(source, functional.__file__, "exec"), namespace)  # a function "defined in" rfdetr/losses
    with ImplicitDeviceGuard() as guard:
        namespace["_probe"](torch.ones(2))
        torch.zeros(2)  # from the tests: not rfdetr code, not reported
    assert len(guard.violations) == 1 and "rfdetr/losses/functional.py:2: torch.zeros" in guard.violations[0]
