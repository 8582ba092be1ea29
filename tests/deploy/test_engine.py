"""``--engine`` on ``python -m rfdetr.predict`` and ``rfdetr.evaluate``: the same detections and mAP as PyTorch within
the float32 error model, one cached export shared with ``optimize_for_inference``, ``auto`` measured once per host, a
missing runtime falling back in one line, and bad flag combinations refused in one line (exit 2)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from rfdetr import evaluate as evaluate_cli
from rfdetr import predict as predict_cli
from rfdetr.data.image_io import read_rgb
from rfdetr.deploy.media.predict import collect_images
from rfdetr.deploy.runtime import auto as auto_module
from rfdetr.deploy.runtime import optimize as optimize_module
from rfdetr.deploy.runtime.runner import ExportedModel
from rfdetr.detr import RFDETR, load_model
from tests.deploy.conftest import require_format
from tests.deploy.models import assert_same_detections

pytestmark = pytest.mark.usefixtures("one_thread")

LOGGER = "rfdetr.deploy.runtime.optimize"
# The runtime packages whose absence the tests simulate (tflite: its conversion costs 25-60 s, too slow here).
TFLITE_PACKAGES = ("ai_edge_litert", "litert_torch")


@pytest.fixture
def checkpoint(tiny_stage2_checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny stage-2 checkpoint: its ``.rfdetr_optimized/`` cache starts empty in each test."""
    return Path(shutil.copy(tiny_stage2_checkpoint, tmp_path / tiny_stage2_checkpoint.name))


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The formats :meth:`RFDETR.export` is called for, in order (a cache hit adds nothing)."""
    calls: list[str] = []
    real = RFDETR.export

    def counting(self: RFDETR, *args: object, **kwargs: object) -> Path:
        calls.append(str(kwargs.get("format")))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RFDETR, "export", counting)
    yield calls


def _predict(argv: list[str]) -> int:
    return predict_cli.main(predict_cli.get_args_parser().parse_args([*argv, "--no_progress", "--size", "tiny"]))


def _evaluate(argv: list[str]) -> int:
    return evaluate_cli.main(evaluate_cli.get_args_parser().parse_args([*argv, "--no_progress", "--size", "tiny"]))


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_predict_engine_matches_torch_and_reuses_the_cache(
    engine: str, checkpoint: Path, synthetic_dir: Path, tmp_path: Path, exports: list[str],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    require_format(optimize_module.ENGINES[engine])
    loaded: list[RFDETR] = []
    real_load = predict_cli.load_predictor
    monkeypatch.setattr(predict_cli, "load_predictor", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    source = synthetic_dir / "test"
    argv = ["--weights", str(checkpoint), "--source", str(source), "--threshold", "0.0", "--engine", engine]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert _predict([*argv, "--output", str(tmp_path / "a")]) == 0
    assert exports == [optimize_module.ENGINES[engine]]
    built = _messages(caplog, f"engine {engine}: exported in ")
    assert len(built) == 1 and " s: " in built[0]  # the export time, said once
    engine_model = loaded[-1]
    assert isinstance(engine_model._engine, ExportedModel) and engine_model._engine.format.name == exports[0]
    path = engine_model._engine.path
    assert path.parent.parent == checkpoint.parent / ".rfdetr_optimized"
    # The detections: the engine's predict() finds the eager PyTorch model's, within the float32 error model.
    pictures = [np.asarray(read_rgb(p)) for p in collect_images(str(source))]
    assert len(pictures) == 4
    assert_same_detections(load_model(checkpoint, "tiny", device="cpu"), engine_model, pictures)  # type: ignore[arg-type]
    written = json.loads((tmp_path / "a" / "predictions.json").read_text())
    assert len(written["images"]) == 4 and len(written["annotations"]) == 4 * engine_model.postprocess.num_select

    # Second call: the cached file, no export; and optimize_for_inference finds the CLI's file (same key).
    mtime = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert _predict([*argv, "--output", str(tmp_path / "b")]) == 0
        load_model(checkpoint, "tiny", device="cpu").optimize_for_inference(engine=engine)
    assert exports == [optimize_module.ENGINES[engine]] and path.stat().st_mtime_ns == mtime
    assert len(_messages(caplog, f"engine {engine}: using the cached file {path}")) == 2
    assert not _messages(caplog, "exported in")
    assert json.loads((tmp_path / "b" / "predictions.json").read_text()) == written  # the same file, the same run


def test_evaluate_engines_give_torch_map(checkpoint: Path, synthetic_dir: Path, tmp_path: Path,
                                         exports: list[str]) -> None:
    engines = [e for e in ("onnxruntime", "openvino") if not optimize_module.engine_missing(e)]
    if not engines:
        pytest.skip("needs onnxruntime or openvino")
    base = ["--weights", str(checkpoint), "--dataset", str(synthetic_dir)]
    assert _evaluate([*base, "--output", str(tmp_path / "torch.json")]) == 0
    ours = json.loads((tmp_path / "torch.json").read_text())
    for engine in engines:
        assert _evaluate([*base, "--engine", engine, "--output", str(tmp_path / f"{engine}.json")]) == 0
        theirs = json.loads((tmp_path / f"{engine}.json").read_text())
        for iou_type in ("bbox", "segm"):
            # The engine's detections agree with PyTorch's within the float32 error model (the predict test above):
            # scores ~1e-6 apart, so a COCO stat moves only where two near-tied detections trade ranks; 1e-3 as
            # tests/deploy/test_evaluate.py bounds an exported file's stats against its checkpoint's.
            assert theirs[iou_type]["stats"] == pytest.approx(ours[iou_type]["stats"], abs=1e-3)
    assert exports == [optimize_module.ENGINES[e] for e in engines]


def test_auto_measures_once_and_picks_the_fastest(
    checkpoint: Path, synthetic_dir: Path, tmp_path: Path, exports: list[str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("onnxruntime", "openvino"):
        require_format(optimize_module.ENGINES[name])
    for package in TFLITE_PACKAGES:
        monkeypatch.setitem(sys.modules, package, None)  # tflite "not installed": its conversion is too slow here
    fake_ms = {"openvino": 7.0, "onnxruntime": 3.0, "torch": 5.0}
    timed: list[str] = []

    def fake_measure(forwards: dict[str, object], pixels: torch.Tensor, threads: int | None = None) -> dict:
        assert list(pixels.shape) == [1, 3, 64, 64] and threads == 1 and all(map(callable, forwards.values()))
        timed.extend(forwards)
        return {name: fake_ms[name] for name in forwards}

    monkeypatch.setattr(optimize_module, "measure", fake_measure)
    argv = ["--weights", str(checkpoint), "--source", str(synthetic_dir / "test"), "--engine", "auto",
            "--threads", "1"]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert _predict([*argv, "--output", str(tmp_path / "a")]) == 0
    assert sorted(timed) == ["onnxruntime", "openvino", "torch"] and sorted(exports) == ["onnx", "openvino"]
    picked = _messages(caplog, "engine auto: picked")
    assert len(picked) == 1
    assert "picked onnxruntime, the fastest on this host" in picked[0]
    assert "onnxruntime 3.0 ms, torch 5.0 ms, openvino 7.0 ms" in picked[0] and "tflite not installed" in picked[0]
    decisions = list((checkpoint.parent / ".rfdetr_optimized").glob("auto_*.json"))
    assert len(decisions) == 1 and str(decisions[0]) in picked[0]
    decision = json.loads(decisions[0].read_text())
    assert decision["engine"] == "onnxruntime" and decision["ms"] == fake_ms and decision["host"]["threads"] == 1

    # Again, from the command line and from the Python API: the cached decision, no export, no measurement.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert _predict([*argv, "--output", str(tmp_path / "b")]) == 0
        model = load_model(checkpoint, "tiny", device="cpu")
        engine = model.optimize_for_inference(engine="auto", threads=1)
    assert len(timed) == 3 and len(exports) == 2
    assert isinstance(engine, ExportedModel) and engine.format.name == "onnx"
    cached = _messages(caplog, "engine auto: onnxruntime (")
    assert len(cached) == 2 and f"measured once on this host, cached in {decisions[0]}" in cached[0]

    # Another host (or thread count) measures again, reusing the exported files; PyTorch may win there.
    fake_ms.update(torch=1.0)
    monkeypatch.setattr(optimize_module, "host_key", lambda threads: {"cpu": "another CPU", "threads": threads})
    module = model.optimize_for_inference(engine="auto", threads=1)
    assert len(timed) == 6 and len(exports) == 2
    assert not isinstance(module, ExportedModel) and model._engine is None and model._optimized is module
    # On a GPU, auto is PyTorch (the fast path there), with nothing measured.
    assert optimize_module.pick_engine("auto", torch.device("cuda")) is None


def test_missing_engine_falls_back_to_torch_in_one_line(
    checkpoint: Path, synthetic_dir: Path, tmp_path: Path, exports: list[str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    argv = ["--weights", str(checkpoint), "--source", str(synthetic_dir / "test"), "--threshold", "0.0"]
    assert _predict([*argv, "--output", str(tmp_path / "torch")]) == 0
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails; find_spec says it is missing
    with caplog.at_level(logging.INFO):
        assert _predict([*argv, "--engine", "openvino", "--output", str(tmp_path / "fallback")]) == 0
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1, said
    assert said[0].startswith("engine openvino needs openvino, which is not installed: pip install openvino==")
    assert said[0].endswith("running PyTorch float32 instead")
    assert exports == [] and not (checkpoint.parent / ".rfdetr_optimized").exists()
    fallback = json.loads((tmp_path / "fallback" / "predictions.json").read_text())
    assert fallback == json.loads((tmp_path / "torch" / "predictions.json").read_text())  # the eager torch path
    # The Python API raises by default and falls back when asked to.
    model = load_model(checkpoint, "tiny", device="cpu")
    with pytest.raises(ImportError, match="engine openvino needs openvino, which is not installed: pip install"):
        model.optimize_for_inference(engine="openvino")
    assert model.optimize_for_inference(engine="openvino", fallback=True) is model._optimized


def test_bad_engine_flags_exit_2_with_one_line(
    checkpoint: Path, synthetic_dir: Path, tmp_path: Path, exports: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"never read: the flags are refused first")
    source = ["--source", str(synthetic_dir / "test"), "--output", str(tmp_path / "out")]
    calibration = ["--calibration", str(synthetic_dir / "valid")]
    cases = [
        (["--weights", str(checkpoint), "--engine", "auto", "--int8"], "--int8 needs --calibration DIR"),
        (["--weights", str(checkpoint), "--engine", "torch", "--int8", *calibration],
         "--int8 needs a runtime engine: add --engine auto"),
        (["--weights", str(checkpoint), "--int8", *calibration], "--int8 needs a runtime engine"),
        (["--weights", str(checkpoint), "--engine", "openvino", *calibration],
         "--calibration is used by --int8 only"),
        (["--weights", str(checkpoint), "--engine", "auto", "--int8", "--calibration", str(tmp_path / "nope")],
         f"--calibration {tmp_path / 'nope'}: no such folder"),
        (["--weights", str(onnx_file), "--engine", "openvino"],
         f"--engine openvino: {onnx_file} is already an exported onnx file (it runs in onnxruntime); give the "
         "checkpoint as --weights to choose an engine, or leave --engine out"),
        (["--weights", str(onnx_file), "--engine", "onnxruntime", "--int8", *calibration],
         f"--int8: {onnx_file} is already an exported onnx file"),
        (["--weights", str(checkpoint), "--threads", "0"], "--threads must be >= 1, got 0"),
    ]
    for argv, message in cases:
        assert _predict([*argv, *source]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("rfdetr.predict: error: ") and message in err, (argv, err)
    # evaluate shares the flags and their checks.
    assert _evaluate(["--weights", str(onnx_file), "--dataset", str(synthetic_dir), "--engine", "tflite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rfdetr.evaluate: error: --engine tflite:" in err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own one-line refusal of an unknown engine
        predict_cli.get_args_parser().parse_args(["--weights", "w", "--source", "s", "--engine", "tensorrt"])
    assert exit_info.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err
    assert exports == []


def test_measure_times_every_candidate_in_interleaved_rounds() -> None:
    order: list[str] = []

    def forward(name: str, seconds: float) -> object:
        def run(pixels: torch.Tensor) -> None:
            order.append(name)
            time.sleep(seconds)
        return run

    threads = torch.get_num_threads()
    ms = auto_module.measure({"slow": forward("slow", 0.004), "fast": forward("fast", 0.0)}, torch.zeros(1), 3)
    assert torch.get_num_threads() == threads  # restored
    assert set(ms) == {"slow", "fast"} and ms["slow"] >= 4.0 > ms["fast"]  # sleep() sleeps at least that long
    warmup = 2 * auto_module.WARMUP
    assert order[:warmup] == ["slow"] * auto_module.WARMUP + ["fast"] * auto_module.WARMUP
    rounds = order[warmup:]
    assert len(rounds) == 2 * auto_module.REPEATS and rounds[:4] == ["slow", "fast", "fast", "slow"]  # rotated
