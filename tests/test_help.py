"""``--help`` of the commands shows what applies and the defaults, once (issue #23 point 8)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _script_parser(name: str) -> argparse.ArgumentParser:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO_ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_args_parser()


def _help(parser: argparse.ArgumentParser) -> str:
    parser.prog = "prog"
    return parser.format_help()


def test_stage2_help_shows_only_stage2_options() -> None:
    """Stage 2 hides the detector-training flags a frozen detector ignores, but still accepts them (shared command
    lines, e.g. bench_two_stage's ``--use_ema 0``) with stage 2's own defaults; wording bugs fixed."""
    parser = _script_parser("train_seg_stage2.py")
    text = _help(parser)
    for flag in ("--freeze_encoder", "--lr_encoder", "--lr_vit_layer_decay", "--cls_loss_coef", "--ia_bce_loss",
                 "--use_ema", "--no_ema", "--ema_decay", "--focal_alpha"):
        assert flag not in text, flag
    for flag in ("--mask_ce_loss_coef", "--mask_dice_loss_coef", "--set_cost_class", "--seg_lr", "--epochs",
                 "--checkpoint", "--cache_features", "--clip_max_norm"):
        assert flag in text, flag
    assert "--pretrained" not in text  # --eval_only named it, and stage 2 refuses it
    assert "fork's name" not in text
    assert "(default: cuda if available) (default: None)" not in " ".join(text.split())
    assert len(text.splitlines()) < 230  # 288 lines before
    args = parser.parse_args(["--use_ema", "0", "--lr_encoder", "1e-3"])
    assert args.use_ema is False and args.lr_encoder == 1e-3
    assert parser.parse_args([]).use_ema is False  # stage 2's default, not TrainConfig's


def test_stage1_help_keeps_detector_options() -> None:
    text = _help(_script_parser("train_detector_stage1.py"))
    for flag in ("--freeze_encoder", "--lr_encoder", "--cls_loss_coef", "--use_ema", "--no_ema", "--pretrained"):
        assert flag in text, flag


@pytest.mark.parametrize(("module", "expected"), [
    ("rfdetr.predict", ["(default: 0.5)", "(default: runs/predict)", "(default: auto)"]),
    ("rfdetr.export", ["(default: auto)"]),
    ("rfdetr.evaluate", ["(default: valid)", "(default: 100)", "(default: auto)"]),
])
def test_deploy_commands_help_shows_defaults(module: str, expected: list[str]) -> None:
    text = " ".join(_help(importlib.import_module(module).get_args_parser()).split())
    for default in expected:
        assert default in text, default
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "default: CUDA when available) (default" not in text
    assert "seg_stage2_nano" not in text  # a folder stage 2 never writes



def test_stage2_warns_about_a_hidden_flag_it_ignores(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    parser = _script_parser("train_seg_stage2.py")
    module = importlib.import_module("rfdetr.train.stage2")
    args = parser.parse_args(["--freeze_encoder", "1", "--cls_loss_coef", "3", "--dataset", str(tmp_path / "none")])
    with caplog.at_level("WARNING"), pytest.raises(FileNotFoundError):
        module.run(args)
    assert "--cls_loss_coef, --freeze_encoder: no effect in stage 2" in caplog.text
