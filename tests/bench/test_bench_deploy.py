"""bench/bench_deploy.py: the variant names and the comparison against rfdetr's fastest file (no timing here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    sys.path.insert(0, str(REPO / "bench"))  # bench_deploy imports its sibling harness
    spec = importlib.util.spec_from_file_location("bench_deploy", REPO / "bench" / "bench_deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load()


@pytest.mark.parametrize(("name", "expected"), [
    ("onnx", ("onnx", {})),
    ("openvino-int8", ("openvino", {"int8": True})),
    ("openvino-int8-f32", ("openvino", {"int8": True, "compute": "float32"})),
    ("openvino-int8-bf16", ("openvino", {"int8": True, "compute": "bfloat16"})),
    ("openvino-bf16", ("openvino", {"compute": "bfloat16"})),
    ("tflite-fp16", ("tflite", {"half": True})),
])
def test_variants_map_to_export_arguments(bench: ModuleType, name: str, expected: tuple) -> None:
    assert bench.split_variant(name) == expected


def test_report_names_our_fastest_file_against_rfdetrs_ir(bench: ModuleType) -> None:
    """The ratio column and the closing line compare per round against rfdetr's IR, not medians of medians."""
    def worker(name: str, rounds: list[float]) -> object:
        w = bench.Worker(name, sys.executable, {}, None, "")
        w.rounds, w.times = rounds, rounds
        return w

    ours = worker("ours torch", [200.0, 220.0, 210.0])
    upstream = worker("upstream torch", [250.0, 260.0, 255.0])
    ir = worker("upstream openvino", [100.0, 120.0, 100.0])
    int8 = worker("ours openvino-int8", [60.0, 90.0, 65.0])  # round ratios 0.60, 0.75, 0.65 -> median 0.65
    text = bench.report("nano", 384, [ours, upstream, int8, ir], {}, ours, upstream, [], ir)
    assert "our fastest: ours openvino-int8, 0.65x of rfdetr's fastest file" in text
    assert " 1.00x " in text.splitlines()[-3]  # the IR against itself (its own row)


def test_host_line_names_the_cpu_and_openvinos_default(bench: ModuleType) -> None:
    line = bench.host_line()
    assert line.startswith("host: ") and "OpenVINO CPU default precision" in line
