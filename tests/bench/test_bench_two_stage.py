"""bench/bench_two_stage.py: flags, arm selection, the merged held-out split, a seconds-long run of every arm."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from rfdetr.data.coco import CocoDetection
from rfdetr.data.synthetic import SyntheticSpec, write_synthetic_dataset

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "bench_two_stage.py"
KEYS = {"kind", "from", "bbox_map", "segm_map", "segm_ap50", "segm_ap75", "train_seconds", "peak_mb",
        "trainable_params"}


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_two_stage", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train / 2 valid / 2 test images of 64 px: the least that trains and scores every arm."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("two_stage_data"), SyntheticSpec(
        splits=(("train", 4), ("valid", 2), ("test", 2)), width=64, height=64, max_objects=2, seed=3))


def test_help() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--dataset", "--stage1_epochs", "--skip_from_start", "--eval_split", "--arms", "--json"):
        assert flag in proc.stdout


def test_select_arms() -> None:
    names = ["A_nano", "B_full", "E_dynamic", "C_joint_from_D", "D_joint_from_start"]
    assert bench.select_arms(names, None, False) == names
    assert bench.select_arms(names, None, True) == names[:4]
    assert bench.select_arms(names, ["C", "a", "B_full"], False) == ["A_nano", "B_full", "C_joint_from_D"]
    assert bench.select_arms(names, ["D'", "E"], False) == ["E_dynamic", "D_joint_from_start"]
    assert bench.select_arms(names, ["D"], True) == []
    with pytest.raises(bench.BenchError, match="no such arm"):
        bench.select_arms(names, ["F"], False)
    assert list(bench.stage2_arm_names(["dynamic"])) == ["A_nano", "B_full", "E_dynamic"]


def test_merged_heldout_split(small_dataset: Path, tmp_path: Path) -> None:
    args = bench.get_args_parser().parse_args(["--dataset", str(small_dataset), "--eval_split", "valid+test"])
    root, split, counts = bench.heldout_split(args, tmp_path)
    merged = CocoDetection(root, split)
    parts = [CocoDetection(small_dataset, s) for s in ("valid", "test")]
    assert counts["images"] == len(merged) == sum(len(p) for p in parts) == 4
    coco = json.loads((root / split / "_annotations.coco.json").read_text())
    assert sorted(a["id"] for a in coco["annotations"]) == list(range(1, len(coco["annotations"]) + 1))
    assert counts["objects"] == len(coco["annotations"])
    assert {i["id"] for i in coco["images"]} >= {a["image_id"] for a in coco["annotations"]}
    assert all((root / split / i["file_name"]).is_file() for i in coco["images"])
    with pytest.raises(bench.BenchError, match="never train"):
        bench.heldout_split(bench.get_args_parser().parse_args(["--dataset", "x", "--eval_split", "valid+train"]),
                            tmp_path)


@pytest.mark.slow
def test_every_arm_from_one_detector(small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every arm (stage 1, A, B, any new head, C, D') for one epoch each at 64 px; A/B keep D's bbox mAP exactly."""
    json_path = tmp_path / "result.json"
    args = bench.get_args_parser().parse_args([
        "--dataset", str(small_dataset), "--size", "tiny", "--resolution", "64", "--stage1_epochs", "1", "--epochs",
        "1", "--batch", "2", "--threads", "1", "--output", str(tmp_path / "out"), "--json", str(json_path),
        "--eval_split", "valid+test"])
    assert bench.main(args) == 0
    arms = json.loads(json_path.read_text())["arms"]
    heads = [f"E_{k}" for k in bench.extra_head_kinds()]
    assert list(arms) == ["stage1_D", "A_nano", "B_full", *heads, "C_joint_from_D", "D_joint_from_start"]
    for name, arm in arms.items():
        assert KEYS <= set(arm), name
        assert arm["train_seconds"] > 0 and arm["peak_mb"] > 0 and arm["trainable_params"] > 0, name
    detector = arms["stage1_D"]
    assert (detector["kind"], detector["from"], detector["segm_map"]) == ("stage1", "start", None)
    for name in ("A_nano", "B_full", *heads):
        assert (arms[name]["kind"], arms[name]["from"]) == ("stage2", "D")
        assert arms[name]["bbox_map"] == detector["bbox_map"], name
        assert arms[name]["trainable_params"] < detector["trainable_params"]
    assert arms["C_joint_from_D"]["trainable_params"] == detector["trainable_params"] + arms["A_nano"][
        "trainable_params"]  # tiny's auto head is MaskHeadNano
    assert arms["D_joint_from_start"]["from"] == "start"
    for name, arm in arms.items():  # where masks differ: by size and class, for every arm with masks
        assert (arm["segm_where"] is None) == (name == "stage1_D"), name
        assert name == "stage1_D" or {"small", "medium", "large", "circle"} <= set(arm["segm_where"]), name
    out = capsys.readouterr().out
    assert "| segm AP50:95 by | small | medium | large |" in out
    assert "| A_nano | stage2 | D |" in out and "| C_joint_from_D | single_stage | D |" in out
    assert "bbox mAP == D's: yes" in out
    assert "A_nano vs C_joint_from_D: train time" in out


def test_failed_run_is_one_message(tmp_path: Path) -> None:
    """A failing child: its command and the tail of its stderr in one BenchError; main() prints it, exit code 1."""
    code = "import sys; print('step 1', file=sys.stderr); print('script.py: error: no such file', file=sys.stderr); " \
           "sys.exit(2)"
    with pytest.raises(bench.BenchError) as info:
        bench.run_child([sys.executable, "-c", code], tmp_path / "logs", "A_nano", dict(os.environ))
    message = str(info.value)
    assert "[A_nano] failed (exit code 2)" in message and "sys.exit(2)" in message
    assert message.endswith("step 1\nscript.py: error: no such file")
    assert (tmp_path / "logs" / "A_nano.stderr.txt").is_file()


def test_missing_dataset_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = bench.get_args_parser().parse_args(["--dataset", str(tmp_path / "nowhere"), "--output", str(tmp_path)])
    assert bench.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("bench_two_stage.py: error: --dataset") and "Traceback" not in err


def test_detector_is_reused(small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--detector`` skips stage 1: D is an earlier run's checkpoint, scored like every arm; a file outside a run
    folder is refused in one line."""
    common = ["--dataset", str(small_dataset), "--size", "tiny", "--resolution", "64", "--batch", "2", "--threads",
              "1", "--eval_split", "valid+test"]
    first = bench.get_args_parser().parse_args([*common, "--stage1_epochs", "1", "--arms", "A", "--epochs", "1",
                                                "--output", str(tmp_path / "first")])
    assert bench.main(first) == 0
    (run,) = (tmp_path / "first" / "runs" / "stage1_D").iterdir()
    again = bench.get_args_parser().parse_args([*common, "--detector", str(run / "checkpoint.pth"), "--arms", "A",
                                                "--epochs", "1", "--output", str(tmp_path / "again")])
    assert bench.main(again) == 0
    result = json.loads((tmp_path / "again" / "bench_two_stage.json").read_text())["arms"]
    first_result = json.loads((tmp_path / "first" / "bench_two_stage.json").read_text())["arms"]
    assert result["stage1_D"]["bbox_map"] == first_result["stage1_D"]["bbox_map"] == result["A_nano"]["bbox_map"]
    assert not (tmp_path / "again" / "runs" / "stage1_D").exists() and "[stage1_D] reused" in capsys.readouterr().out
    stray = tmp_path / "stray.pth"
    stray.write_bytes((run / "checkpoint.pth").read_bytes())
    bad = bench.get_args_parser().parse_args([*common, "--detector", str(stray), "--output", str(tmp_path / "bad")])
    assert bench.main(bad) == 1 and "is not a stage-1 run folder" in capsys.readouterr().err
