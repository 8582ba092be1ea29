"""Training from Python (``model.train()``, ``model.train_masks()``, ``model.evaluate()``) is the scripts' training:
same settings, same seed -> the same run folder and the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import train_detector_stage1
import train_seg_single_stage
import train_seg_stage2
from rfdetr import evaluate as evaluate_cli
from rfdetr.checkpoint import load_checkpoint_file
from rfdetr.detr import RFDETRTiny
from rfdetr.util.loggers import read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

# The same settings, spelled for Python (rfdetr's names where they exist) and for the scripts.
PYTHON_SETTINGS = {"epochs": 2, "batch_size": 2, "grad_accum_steps": 1, "num_workers": 0, "multi_scale": False,
                   "augment": False, "seed": 3, "lr": 1e-3, "device": "cpu", "tensorboard": False}
SCRIPT_SETTINGS = ["--size", "tiny", "--epochs", "2", "--batch", "2", "--accum", "1", "--workers", "0",
                   "--multi_scale", "0", "--augment", "0", "--seed", "3", "--lr", "1e-3", "--device", "cpu",
                   "--no_tensorboard", "--resolution", "64"]


def _only_run(root: Path) -> Path:
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return run


def _assert_same_run(a: Path, b: Path) -> None:
    """Same files, same log apart from timings, bit-identical weights in every checkpoint, same settings."""
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    timing = ("train_epoch_time", "eval_time", "epoch_time", "seconds")
    strip = [lambda r: {k: v for k, v in r.items() if not any(t in k for t in timing)}]
    assert [strip[0](r) for r in read_jsonl(a / "log.jsonl")] == [strip[0](r) for r in read_jsonl(b / "log.jsonl")]
    for name in ("checkpoint.pth", "checkpoint_best_total.pth"):
        x, y = load_checkpoint_file(a / name), load_checkpoint_file(b / name)
        assert set(x["model"]) == set(y["model"])
        assert all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"]), name
    ca, cb = (json.loads((p / "config.json").read_text()) for p in (a, b))
    for config in (ca, cb):  # where each was written and how it was called differ; nothing else may
        for section, key in ((None, "argv"), (None, "run_dir"), ("args", "output"), ("args", "_explicit"),
                             ("train", "output_root")):
            (config if section is None else config[section]).pop(key, None)
    assert ca == cb


@pytest.fixture(scope="module")
def stage1_runs(four_images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, RFDETRTiny]:
    """The same stage-1 run twice: by the script, and by ``RFDETRTiny(pretrain_weights=False).train(...)``."""
    script_out, python_out = tmp_path_factory.mktemp("script"), tmp_path_factory.mktemp("python")
    argv = [*SCRIPT_SETTINGS, "--pretrained", "none", "--dataset", str(four_images), "--output", str(script_out)]
    assert train_detector_stage1.main(train_detector_stage1.get_args_parser().parse_args(argv)) == 0
    model = RFDETRTiny(pretrain_weights=False, resolution=64, device="cpu")
    run = model.train(dataset_dir=four_images, output_dir=python_out, **PYTHON_SETTINGS)
    assert run.run_dir == _only_run(python_out) and run.mode == "stage1"
    return _only_run(script_out), run.run_dir, model


def test_train_from_python_is_the_script_run(stage1_runs: tuple[Path, Path, RFDETRTiny]) -> None:
    script_run, python_run, model = stage1_runs
    _assert_same_run(script_run, python_run)
    # The model now holds the run's best weights: predict and export use them at once.
    best = load_checkpoint_file(python_run / "checkpoint_best_total.pth")["model"]
    state = model.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in best.items() if k in state)
    assert model.weights_path == python_run / "checkpoint_best_total.pth"
    assert model.class_names[:3] == ["circle", "square", "triangle"]


def test_train_masks_from_python_is_stage_2(stage1_runs: tuple[Path, Path, RFDETRTiny], four_images: Path,
                                            tmp_path: Path) -> None:
    _, python_run, model = stage1_runs
    detector = python_run / "checkpoint_best_total.pth"
    settings = {"epochs": 1, "batch_size": 2, "grad_accum_steps": 1, "num_workers": 0, "multi_scale": False,
                "augment": False, "seed": 3, "device": "cpu", "tensorboard": False, "eval_interval": 1}
    argv = ["--size", "tiny", "--epochs", "1", "--batch", "2", "--accum", "1", "--workers", "0", "--multi_scale", "0",
            "--augment", "0", "--seed", "3", "--device", "cpu", "--no_tensorboard", "--eval_interval", "1",
            "--resolution", "64", "--checkpoint", str(detector), "--dataset", str(four_images), "--output",
            str(tmp_path / "script")]
    assert train_seg_stage2.main(train_seg_stage2.get_args_parser().parse_args(argv)) == 0
    run = model.train_masks(dataset_dir=four_images, output_dir=tmp_path / "python", **settings)
    assert run.mode == "stage2"
    _assert_same_run(_only_run(tmp_path / "script"), run.run_dir)
    assert model.masks and type(model.model).__name__ == "Segmenter"
    result = model.predict(torch.zeros(3, 64, 64).numpy().transpose(1, 2, 0).astype("uint8"), threshold=0.0)
    assert result.mask is not None  # type: ignore[union-attr]


def test_evaluate_from_python_is_the_command(stage1_runs: tuple[Path, Path, RFDETRTiny], four_images: Path,
                                             tmp_path: Path) -> None:
    _, python_run, model = stage1_runs
    ours = model.evaluate(four_images, split="valid", progress=False)
    out = tmp_path / "eval.json"
    argv = ["--weights", str(python_run / "checkpoint_best_total.pth"), "--dataset", str(four_images), "--split",
            "valid", "--output", str(out), "--no_progress", "--device", "cpu"]
    assert evaluate_cli.main(evaluate_cli.get_args_parser().parse_args(argv)) == 0
    theirs = json.loads(out.read_text())
    assert ours["bbox"]["stats"] == pytest.approx(theirs["bbox"]["stats"], abs=0)
    assert set(ours["bbox"]["per_class_AP"]) == {"circle", "square", "triangle"}


def test_unknown_argument_lists_the_valid_names(tmp_path: Path) -> None:
    model = RFDETRTiny(pretrain_weights=False, device="cpu")
    with pytest.raises(TypeError, match=r"RFDETRTiny\.train\(\) got an unknown argument 'learning_rate'; valid: .*"
                                        r"batch_size, .*dataset_dir, .*grad_accum_steps, .*output_dir"):
        model.train(dataset_dir=tmp_path, learning_rate=1e-3)
    with pytest.raises(ValueError, match="no weights file to freeze"):
        model.train_masks(dataset_dir=tmp_path)


def test_train_with_a_mask_head_is_single_stage(four_images: Path, tmp_path: Path) -> None:
    """A detection preset given ``mask_head=`` trains detector and masks together, as the single-stage script."""
    argv = [*SCRIPT_SETTINGS, "--epochs", "1", "--pretrained", "none", "--mask_head", "nano", "--dataset",
            str(four_images), "--output", str(tmp_path / "script")]
    assert train_seg_single_stage.main(train_seg_single_stage.get_args_parser().parse_args(argv)) == 0
    model = RFDETRTiny(pretrain_weights=False, resolution=64, device="cpu")
    run = model.train(dataset_dir=four_images, output_dir=tmp_path / "python", mask_head="nano",
                      **{**PYTHON_SETTINGS, "epochs": 1})
    assert run.mode == "single_stage" and model.masks
    _assert_same_run(_only_run(tmp_path / "script"), run.run_dir)
