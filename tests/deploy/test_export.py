"""ONNX export: tiny detection, single-stage segmentation and stage-2 models run in onnxruntime and match PyTorch."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx and onnxruntime (pip install onnx onnxruntime)")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install onnxruntime)")

from rfdetr import export as export_cli  # noqa: E402
from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from rfdetr.deploy.formats.onnx import check_onnx_graph, export_onnx, read_metadata  # noqa: E402
from rfdetr.deploy.runner import OnnxModel  # noqa: E402
from rfdetr.detr import RFDETR, RFDETRTiny, load_model  # noqa: E402
from rfdetr.models.segmenter import Segmenter  # noqa: E402

RESOLUTION = 64
NAMES = ["circle", "square", "triangle"]


class RFDETRTinySeg(RFDETR):
    """The tiny config with rfdetr's own segmentation head: a single-stage segmentation model."""

    size = "tiny"

    def _config_for(self, *args: object) -> object:  # type: ignore[override]
        return super()._config_for(*args).replace(segmentation_head=True)  # type: ignore[arg-type]


pytestmark = pytest.mark.usefixtures("one_thread")


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Random non-trivial weights (the zero-initialised box delta and mask bias would hide errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.fixture(scope="module")
def detector() -> RFDETR:
    torch.manual_seed(0)
    model = RFDETRTiny(pretrain_weights=False, num_classes=3, class_names=NAMES, device="cpu")
    _perturb(model.model, 1)
    return model


@pytest.fixture(scope="module")
def segmenter() -> RFDETR:
    torch.manual_seed(0)
    model = RFDETRTinySeg(pretrain_weights=False, num_classes=3, class_names=NAMES, device="cpu")
    _perturb(model.model, 2)
    return model


def _image(height: int = 70, width: int = 90, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_graph_portable(path: Path) -> None:
    proto = onnx.load(str(path))
    assert check_onnx_graph(proto) == []
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert [op.domain for op in proto.opset_import] == [""] and proto.opset_import[0].version == 17
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert all(a.name != "antialias" or a.i == 0 for n in resizes for a in n.attribute)
    assert "GridSample" in {n.op_type for n in proto.graph.node}  # deformable attention as a standard op


def _assert_outputs_match(model: RFDETR, session_path: Path, batch: int = 1) -> None:
    """Raw graph outputs: boxes and logits within 1e-4, masks within 1e-3 (max abs), same top detections."""
    pixels = torch.randn(batch, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(5))
    session = ort.InferenceSession(str(session_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": pixels.numpy()})
    with torch.no_grad():
        expected = model.model.forward_export(pixels)
    if not model.masks:
        expected = expected[:2]
    assert len(got) == len(expected)
    for name, ours, theirs, tol in zip(("dets", "labels", "masks"), got, expected, (1e-4, 1e-4, 1e-3), strict=False):
        assert ours.shape == tuple(theirs.shape), name
        assert np.abs(ours - theirs.numpy()).max() <= tol, name
    # The same top detections: top-10 (query, class) pairs by score.
    top_ours = np.argsort(-got[1].reshape(batch, -1), axis=1, kind="stable")[:, :10]
    top_torch = torch.sort(expected[1].flatten(1), dim=1, descending=True, stable=True).indices[:, :10]
    np.testing.assert_array_equal(top_ours, top_torch.numpy())


def _assert_same_detections(model: RFDETR, onnx_model: OnnxModel, images: list[np.ndarray]) -> None:
    ours = model.predict(images, threshold=0.0)
    theirs = onnx_model.predict(images, threshold=0.0)
    assert isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs) == len(images)
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == len(b) == model.postprocess.num_select
        np.testing.assert_allclose(b.confidence, a.confidence, atol=1e-5)
        np.testing.assert_array_equal(b.class_id[:10], a.class_id[:10])
        np.testing.assert_allclose(b.xyxy[:10], a.xyxy[:10], atol=1e-3)
        assert b.class_name == a.class_name
        if a.mask is None:
            assert b.mask is None
        else:
            assert b.mask is not None and b.mask.shape == a.mask.shape
            assert (b.mask[:10] != a.mask[:10]).mean() < 1e-3  # only pixels whose logit is ~0 may flip


def test_detection_export_matches_pytorch(detector: RFDETR, tmp_path: Path) -> None:
    path = detector.export(tmp_path)
    assert path == tmp_path / "inference_model.onnx" and path.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing behind
    _assert_graph_portable(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("input", [1, 3, RESOLUTION, RESOLUTION])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("dets", [1, 20, 4]), ("labels", [1, 20, 4])]
    meta = read_metadata(path)
    assert meta["class_names"] == NAMES + ["class_3"] or meta["class_names"] == NAMES
    assert meta["resolution"] == RESOLUTION and meta["masks"] is False and meta["num_select"] == 20
    assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
    _assert_outputs_match(detector, path)

    onnx_model = OnnxModel(path, threads=1)
    assert onnx_model.class_names == detector.class_names and not onnx_model.masks and onnx_model.batch_size == 1
    # Three images of different sizes through a batch-1 file: predict() runs them one by one.
    _assert_same_detections(detector, onnx_model, [_image(), _image(40, 64, 1), _image(64, 48, 2)])
    single = onnx_model.predict(_image(), threshold=0.5)
    assert not isinstance(single, list) and (single.confidence > 0.5).all()


def test_segmentation_export_matches_pytorch(segmenter: RFDETR, tmp_path: Path) -> None:
    path = segmenter.export(tmp_path, batch_size=2)
    _assert_graph_portable(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["dets", "labels", "masks"]
    assert session.get_outputs()[2].shape == [2, 20, RESOLUTION // 4, RESOLUTION // 4]
    _assert_outputs_match(segmenter, path, batch=2)
    onnx_model = OnnxModel(path)
    assert onnx_model.masks and onnx_model.batch_size == 2
    # Three images through a batch-2 file: one full chunk, one padded.
    _assert_same_detections(segmenter, onnx_model, [_image(), _image(40, 64, 1), _image(64, 48, 2)])


def test_stage2_export_cli_dynamic_batch(
    tiny_stage2_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--weights", str(tiny_stage2_checkpoint), "--size", "tiny", "--output", str(tmp_path), "--dynamic_batch"]
    assert export_cli.main(export_cli.get_args_parser().parse_args(argv)) == 0
    path = tmp_path / "inference_model.onnx"
    assert capsys.readouterr().out.strip().endswith(str(path))
    _assert_graph_portable(path)
    model = load_model(tiny_stage2_checkpoint, "tiny", device="cpu")
    assert isinstance(model.model, Segmenter) and model.masks
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, RESOLUTION, RESOLUTION]
    _assert_outputs_match(model, path, batch=3)
    onnx_model = OnnxModel(path)
    assert onnx_model.batch_size is None and onnx_model.class_names[:3] == NAMES
    _assert_same_detections(model, onnx_model, [_image(), _image(40, 64, 1)])

    # --no_masks: the stage-2 checkpoint loads as its detector alone.
    argv = ["--weights", str(tiny_stage2_checkpoint), "--size", "tiny", "--output", str(tmp_path / "det"), "--no_masks"]
    assert export_cli.main(export_cli.get_args_parser().parse_args(argv)) == 0
    det = ort.InferenceSession(str(tmp_path / "det" / "inference_model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in det.get_outputs()] == ["dets", "labels"]


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
    with pytest.raises(ValueError, match="unknown export format 'tflite'; supported: onnx"):
        detector.export(tmp_path, format="tflite")
    with pytest.raises(ValueError, match="opset must be between 16"):
        detector.export(tmp_path, opset=13)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        detector.export(tmp_path, batch_size=0)
    parser = export_cli.get_args_parser()
    missing = tmp_path / "missing.pth"
    assert export_cli.main(parser.parse_args(["--weights", str(missing)])) == 2
    assert f"rfdetr.export: error: weights '{missing}' not found" in capsys.readouterr().err
    assert export_cli.main(parser.parse_args(["--weights", str(missing), "--format", "tflite"])) == 2
    assert "unknown --format 'tflite'; supported: onnx" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match="pip install onnx onnxruntime"):
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
    with caplog.at_level(logging.INFO, logger="rfdetr.deploy.formats.onnx"):
        assert detector.export(tmp_path / "b", simplify=True).is_file()
    assert "onnxsim is not installed" in caplog.text
