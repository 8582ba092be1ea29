"""ONNX export: tiny detection, single-stage segmentation and stage-2 models run in onnxruntime and match PyTorch."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx and onnxruntime (pip install onnx onnxruntime)")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install onnxruntime)")

from rfdetr import export as export_cli  # noqa: E402
from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from rfdetr.deploy.export.formats.onnx import check_onnx_graph, export_onnx, read_metadata  # noqa: E402
from rfdetr.deploy.runtime.runner import OnnxModel  # noqa: E402
from rfdetr.detr import RFDETR, load_model  # noqa: E402
from rfdetr.models.segmenter import Segmenter  # noqa: E402
from tests.deploy.models import (  # noqa: E402
    NAMES,
    RESOLUTION,
    assert_outputs_match,
    assert_same_detections,
    image,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_graph_portable(path: Path) -> None:
    proto = onnx.load(str(path))
    assert check_onnx_graph(proto) == []
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert [op.domain for op in proto.opset_import] == [""] and proto.opset_import[0].version == 17
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert all(a.name != "antialias" or a.i == 0 for n in resizes for a in n.attribute)
    assert "GridSample" in {n.op_type for n in proto.graph.node}  # deformable attention as a standard op


def test_detection_graph_is_portable_and_named(exported: Callable[[str, str], Path]) -> None:
    """ONNX's own promises (the contract test checks outputs and detections): standard operators only, no antialias,
    named static input and outputs, the metadata readable by :func:`read_metadata` alone."""
    path = exported("detector", "onnx")
    _assert_graph_portable(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("input", [1, 3, RESOLUTION, RESOLUTION])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("dets", [1, 20, 4]), ("labels", [1, 20, 4])]
    meta = read_metadata(path)
    assert meta["class_names"] == NAMES and meta["resolution"] == RESOLUTION and meta["masks"] is False
    assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
    assert OnnxModel(path).class_names == NAMES  # the old class name still runs the file


def test_segmentation_graph_is_portable(exported: Callable[[str, str], Path]) -> None:
    path = exported("segmenter", "onnx")
    _assert_graph_portable(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["dets", "labels", "masks"]
    assert session.get_outputs()[2].shape == [2, 20, RESOLUTION // 4, RESOLUTION // 4]


def test_stage2_export_cli_dynamic_batch(
    tiny_stage2_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No --size: the checkpoint records its config (``tiny``), so the default ``auto`` finds it.
    argv = ["--weights", str(tiny_stage2_checkpoint), "--output", str(tmp_path), "--dynamic_batch"]
    assert export_cli.main(export_cli.get_args_parser().parse_args(argv)) == 0
    path = tmp_path / "inference_model.onnx"
    assert capsys.readouterr().out.strip().endswith(str(path))
    _assert_graph_portable(path)
    model = load_model(tiny_stage2_checkpoint, "tiny", device="cpu")
    assert isinstance(model.model, Segmenter) and model.masks
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, RESOLUTION, RESOLUTION]
    assert_outputs_match(model, OnnxModel(path), batch=3)
    onnx_model = OnnxModel(path)
    assert onnx_model.batch_size is None and onnx_model.class_names[:3] == NAMES
    assert_same_detections(model, onnx_model, [image(), image(40, 64, 1)])

    # --no_masks: the stage-2 checkpoint loads as its detector alone.
    argv = ["--weights", str(tiny_stage2_checkpoint), "--size", "tiny", "--output", str(tmp_path / "det"), "--no_masks"]
    assert export_cli.main(export_cli.get_args_parser().parse_args(argv)) == 0
    det = ort.InferenceSession(str(tmp_path / "det" / "inference_model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in det.get_outputs()] == ["dets", "labels"]


def test_dynamic_head_graph_is_portable_with_a_dynamic_batch(tiny_dynamic_checkpoint: Path, tmp_path: Path) -> None:
    """MaskHeadDynamic (image path + per-query MLPs on box-relative coordinates) in a portable graph whose batch is
    symbolic, equal to PyTorch's at batch 2 (the static-batch file is in the contract test)."""
    argv = ["--weights", str(tiny_dynamic_checkpoint), "--output", str(tmp_path), "--dynamic_batch"]
    assert export_cli.main(export_cli.get_args_parser().parse_args(argv)) == 0
    path = tmp_path / "inference_model.onnx"
    _assert_graph_portable(path)
    model = load_model(tiny_dynamic_checkpoint, "tiny", device="cpu")
    assert type(model.model.mask_head).__name__ == "MaskHeadDynamic" and model.masks
    assert_outputs_match(model, OnnxModel(path), batch=2)
    assert_same_detections(model, OnnxModel(path), [image(), image(40, 64, 1)])


def test_position_embeddings_are_baked_at_another_resolution(detector: RFDETR, tmp_path: Path) -> None:
    """At 96 px the 4x4 stored grid is resized (bicubic, antialias) in eager mode; the export bakes the result."""
    path = export_onnx(detector.model, tmp_path / "m96.onnx", 96)
    proto = onnx.load(str(path))
    assert check_onnx_graph(proto) == []
    assert detector.model.backbone[0].encoder.encoder.embeddings.pos_grid == 4  # the model itself is unchanged
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": pixels.numpy()})
    with torch.no_grad():
        expected = detector.model.forward_export(pixels)
    for ours, theirs in zip(got, expected, strict=True):
        assert np.abs(ours - theirs.numpy()).max() <= 1e-4


def test_check_onnx_graph_flags_custom_ops_and_antialias() -> None:
    helper = onnx.helper
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["y"], name="aa", antialias=1, mode="cubic"),
        helper.make_node("MyOp", ["y"], ["z"], domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor("scales", onnx.TensorProto.FLOAT, [4], [1, 1, 2, 2])],
    )
    problems = check_onnx_graph(helper.make_model(graph))
    assert any("com.example::MyOp" in p for p in problems)
    assert any("'aa' has antialias=1" in p for p in problems)


def test_export_errors(
    detector: RFDETR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match="unknown export format 'coreml'; supported: onnx"):
        detector.export(tmp_path, format="coreml")
    with pytest.raises(ValueError, match="opset must be between 16"):
        detector.export(tmp_path, opset=13)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        detector.export(tmp_path, batch_size=0)
    parser = export_cli.get_args_parser()
    missing = tmp_path / "missing.pth"
    assert export_cli.main(parser.parse_args(["--weights", str(missing)])) == 2
    assert f"rfdetr.export: error: weights '{missing}' not found" in capsys.readouterr().err
    assert export_cli.main(parser.parse_args(["--weights", str(missing), "--format", "coreml"])) == 2
    assert "unknown export format 'coreml'; supported: onnx" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r"needs onnx, which is not installed: pip install onnx==.* onnxruntime=="):
        detector.export(tmp_path)
    assert not list(tmp_path.glob("*.onnx"))


def test_simplify_uses_onnxsim_when_installed(
    detector: RFDETR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def simplify(proto: object) -> tuple[object, bool]:
        calls.append(proto)
        return proto, True

    monkeypatch.setitem(sys.modules, "onnxsim", types.SimpleNamespace(simplify=simplify))
    assert detector.export(tmp_path / "a", simplify=True).is_file() and len(calls) == 1
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # not installed: logged, the exported graph is kept
    with caplog.at_level(logging.INFO, logger="rfdetr.deploy.export.formats.onnx"):
        assert detector.export(tmp_path / "b", simplify=True).is_file()
    assert "onnxsim is not installed" in caplog.text
