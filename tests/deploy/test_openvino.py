"""OpenVINO IR export: the tiny detection, single-stage segmentation and stage-2 models run in OpenVINO like PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="OpenVINO export tests need openvino (pip install openvino==2026.4.1)")

from rfdetr.config import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from rfdetr.deploy import load  # noqa: E402
from rfdetr.deploy.export.formats.openvino import read_metadata  # noqa: E402
from rfdetr.detr import RFDETR  # noqa: E402
from tests.deploy.models import (  # noqa: E402
    NAMES,
    RESOLUTION,
    DetectionTolerance,
    Tolerance,
    assert_outputs_match,
    assert_same_detections,
    image,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# float16 weights (``half=True``): each weight is rounded to 11 significant bits (relative error <= 2^-11 ~ 5e-4);
# through the tiny models' layers that moves logits by up to 3.3e-3 and mask logits (dot products of larger
# activations) by up to 3.2e-2, boxes (a sigmoid of small deltas) by 3.5e-5 (measured on 3 random batches). The
# tolerance is about 3x those maxima; the top-10 proposals and detections must still be the same.
FLOAT16 = Tolerance(boxes=2e-4, logits=1e-2, masks=1e-1)
# Scores are sigmoid(logit) (slope <= 1/4), so a logit tolerance of 1e-2 is a score tolerance of 2.5e-3.
FLOAT16_SCORE_ATOL = 2.5e-3
# Boxes are normalised cxcywh scaled to pixels: 2e-4 of the 90 px test image is 0.018 px.
FLOAT16_BOX_ATOL = 0.02


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def test_ir_has_a_static_named_input_and_named_outputs(exported: Callable[[str, str], Path]) -> None:
    """OpenVINO's own promises (the contract test checks outputs and detections): rfdetr's IR has [?,?,?,?] and
    anonymous outputs; ours a static, named input, named float32 outputs, and the metadata in the IR's rt_info."""
    path = exported("detector", "openvino")
    assert path.with_suffix(".bin").is_file()
    model = ov.Core().read_model(str(path))
    assert [(i.get_any_name(), str(i.get_partial_shape())) for i in model.inputs] == [("input", "[1,3,64,64]")]
    assert [(o.get_any_name(), str(o.get_partial_shape())) for o in model.outputs] == [
        ("dets", "[1,20,4]"), ("labels", "[1,20,4]")]
    assert {str(o.get_element_type()) for o in model.outputs} == {"<Type: 'float32'>"}
    meta = read_metadata(path)
    assert meta["class_names"] == NAMES and meta["resolution"] == RESOLUTION and meta["format"] == "openvino"
    assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)


@pytest.mark.parametrize("which", ["segmenter", "stage2"])
def test_half_weights_keep_the_top_detections(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model: RFDETR = request.getfixturevalue(which)
    path = model.export(tmp_path, format="openvino", half=True)
    assert path.name == "inference_model_fp16.xml" and read_metadata(path)["precision"] == "float16"
    # float16 weights: the .bin is about half of the float32 parameters.
    float32_bytes = 4 * sum(p.numel() for p in model.model.parameters())
    assert path.with_suffix(".bin").stat().st_size < 0.6 * float32_bytes
    exported = load(path)
    assert_outputs_match(model, exported, tol=FLOAT16)
    _assert_same_top_detections(model, exported, [image(), image(40, 64, 1)])


def _assert_same_top_detections(model: RFDETR, exported: object, images: list[np.ndarray]) -> None:
    """:func:`assert_same_detections` at the float16 bounds: scores within ``FLOAT16_SCORE_ATOL``, boxes within
    ``FLOAT16_BOX_ATOL``, mask pixels equal where PyTorch's mask logit exceeds the float16 mask bound (pixels whose
    logit is within the float16 error of 0 may flip)."""
    tol = DetectionTolerance(score=FLOAT16_SCORE_ATOL, box=FLOAT16_BOX_ATOL, mask_logit=FLOAT16.masks)
    assert_same_detections(model, exported, images, tol=tol)  # type: ignore[arg-type]


def test_optimize_for_inference_runs_the_ir(detector: RFDETR, tmp_path: Path) -> None:
    engine = detector.optimize_for_inference(engine="openvino", cache_dir=tmp_path)
    try:
        assert engine.format.name == "openvino" and engine.path.suffix == ".xml"
        pictures = [image(), image(40, 64, 1)]
        ours = detector.predict(pictures, threshold=0.0)
    finally:
        detector.remove_optimized_model()
    theirs = detector.predict(pictures, threshold=0.0)
    for a, b in zip(ours, theirs, strict=True):  # type: ignore[arg-type]
        # The same IR through the same runtime as predict() with the engine: only the PyTorch side changed, so the
        # float32 error model's score bound (4x a float32-vs-float64 logit error of 1.4e-6, / 4) is ~1.4e-6; 1e-5
        # is that bound rounded up for the near-zero proposals of the slot-by-slot list.
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)
        np.testing.assert_array_equal(a.class_id[:10], b.class_id[:10])


def test_load_rejects_foreign_and_broken_files(exported: Callable[[str, str], Path], tmp_path: Path) -> None:
    """Beyond the contract's garbage and truncated files: an IR without its .bin, and an IR of another model."""
    # An IR whose .bin is gone.
    lonely = tmp_path / "lonely.xml"
    lonely.write_text(exported("detector", "openvino").read_text())
    with pytest.raises(ValueError, match=f"^{lonely}: OpenVINO cannot read it as an IR"):
        load(lonely)
    # A valid IR that is not an RF-DETR export.
    import openvino.opset13 as ops

    param = ops.parameter([1, 4], np.float32, name="x")
    foreign = tmp_path / "foreign.xml"
    ov.save_model(ov.Model([ops.relu(param)], [param]), str(foreign))
    with pytest.raises(ValueError, match=f"^{foreign} is not an RF-DETR export: expected one static input 'input'"):
        load(foreign)


def test_failed_export_leaves_no_files(detector: RFDETR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = ov.save_model

    def save_then_fail(model: object, path: str, compress_to_fp16: bool = True) -> None:
        real_save(model, path, compress_to_fp16=compress_to_fp16)  # both files written, then the disk "fills up"
        raise OSError("No space left on device")

    monkeypatch.setattr(ov, "save_model", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        detector.export(tmp_path, format="openvino")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_int8_ir_is_quantized_and_runs(segmenter: RFDETR, strawberry_dir: Path, tmp_path: Path) -> None:
    """Full-integer INT8 by NNCF: FakeQuantize in front of the matrix products, a smaller file, the same contract.

    The tiny model has random weights, so its INT8 outputs are far from float32 (as with ONNX INT8: max box diff
    0.76 for both here); whether INT8 keeps a trained model's detections is checked with a trained model."""
    path = segmenter.export(tmp_path, format="openvino", int8=True, calibration=strawberry_dir, calibration_images=4)
    assert path.name == "inference_model_int8.xml" and read_metadata(path)["precision"] == "int8"
    assert _leftovers(tmp_path) == []  # the hidden float32 IR the quantizer read is gone
    model = ov.Core().read_model(str(path))
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops()) > 50
    assert path.with_suffix(".bin").stat().st_size < 0.6 * 4 * sum(p.numel() for p in segmenter.model.parameters())
    exported = load(path)
    assert exported.session.output_names == ["dets", "labels", "masks"] and exported.class_names == NAMES
    detections = exported.predict(image(), threshold=0.0)
    assert len(detections) == 20 and detections.mask is not None  # type: ignore[union-attr]


def _compute_of(path: Path) -> str:
    return read_metadata(path).get("compute", "float32")


def test_compute_is_the_files_and_bf16_only_where_native(detector: RFDETR, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``compute="bfloat16"`` is recorded in the IR and applied by the Session where the CPU has native bf16, float32
    elsewhere; a float32 file never runs in bf16 (the plugin's own default on bf16 CPUs); the detections of a bf16
    run stay within the stated bf16 bound of PyTorch's."""
    from rfdetr.deploy.export.agreement import BF16_BOUND
    from rfdetr.deploy.export.formats import openvino as ovm
    from rfdetr.deploy.export.report import load_report

    plain = detector.export(tmp_path, format="openvino", file_name="plain.xml")
    fast = detector.export(tmp_path, format="openvino", file_name="fast.xml", compute="bfloat16")
    assert _compute_of(plain) == "float32" and _compute_of(fast) == "bfloat16"
    native = ovm.native_bf16()
    assert ovm.Session(plain).compute == "float32"
    assert ovm.Session(fast).compute == ("bfloat16" if native else "float32")
    assert ovm.Session(fast, compute="float32").compute == "float32"
    report = load_report(fast)
    assert report["compute"] == ("bfloat16" if native else "float32")
    if native:
        assert report["detections"]["bound"]["score"] == BF16_BOUND.score
    # The tiny detector's top detections within the bf16 bounds (on a CPU without bf16 this is the float32 run).
    # Boxes: bf16 keeps 8 significant bits (relative rounding 2^-9 per operation); through the box head's layers and
    # the decoder's refinements 16 such roundings of a coordinate add up to 16 * 2^-9 = 3% of the image side.
    side = detector.resolution
    assert_same_detections(detector, load(fast), [image(seed=seed) for seed in range(2)],
                           tol=DetectionTolerance(score=BF16_BOUND.score, box=16 * 2**-9 * side,
                                                  mask_logit=BF16_BOUND.mask_logit))
    monkeypatch.setattr(ovm, "native_bf16", lambda: False)
    assert ovm.Session(fast).compute == "float32"
    with pytest.raises(ValueError, match="compute 'fp8' is not one of float32, bfloat16"):
        ovm.Session(fast, compute="fp8")


def test_compute_option_is_checked(detector: RFDETR, tmp_path: Path) -> None:
    """bfloat16 only where the file sets its precision (openvino); unknown values named."""
    with pytest.raises(ValueError, match="not offered for onnx"):
        detector.export(tmp_path, format="onnx", compute="bfloat16")
    with pytest.raises(ValueError, match="compute must be one of"):
        detector.export(tmp_path, format="openvino", compute="half")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("native", [True, False])
def test_int8_auto_compute_follows_the_host_and_the_check(native: bool, detector: RFDETR, strawberry_dir: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """INT8 with ``compute="auto"``: bfloat16 on a bf16 CPU, float32 on others; and where the report's check at bf16
    fails, the file is rewritten to float32 and checked again (what the report then says)."""
    from rfdetr.deploy.export import exporter
    from rfdetr.deploy.export.formats import openvino as ovm
    from rfdetr.deploy.export.report import load_report

    if native and not ovm.native_bf16():
        # The bf16 file would then be compiled with a bf16 hint the plugin cannot honour on this CPU.
        pytest.skip("needs a CPU with native bf16 (AMX or AVX512-BF16) to run the bf16 file; the float32 case runs")
    monkeypatch.setattr(ovm, "native_bf16", lambda: native)
    kwargs = {"format": "openvino", "int8": True, "calibration": strawberry_dir, "calibration_images": 2}
    path = detector.export(tmp_path / "auto", **kwargs)
    assert _compute_of(path) == ("bfloat16" if native else "float32")
    assert load_report(path)["compute"] == _compute_of(path)
    pinned = detector.export(tmp_path / "pinned", compute="float32", **kwargs)
    assert _compute_of(pinned) == "float32"
    if not native:
        return
    build = exporter.build_report
    seen: list[str] = []

    def failing_at_bf16(path: Path, *args: object, **kw: object) -> dict:
        report = build(path, *args, **kw)
        seen.append(report["compute"])
        if report["compute"] == "bfloat16":
            report["detections"]["meets"] = False
        return report

    monkeypatch.setattr(exporter, "build_report", failing_at_bf16)
    path = detector.export(tmp_path / "fallback", **kwargs)
    assert seen == ["bfloat16", "float32"]
    assert _compute_of(path) == "float32" and load_report(path)["compute"] == "float32"
    assert ovm.Session(path).compute == "float32"

    def failing_everywhere(path: Path, *args: object, **kw: object) -> dict:
        report = build(path, *args, **kw)
        seen.append(report["compute"])
        report["detections"]["meets"] = False
        return report

    # float32 no better: the faster bf16 file stays, with the report of its own (failing) check.
    seen.clear()
    monkeypatch.setattr(exporter, "build_report", failing_everywhere)
    path = detector.export(tmp_path / "both", **kwargs)
    assert seen == ["bfloat16", "float32"]
    assert _compute_of(path) == "bfloat16" and load_report(path)["compute"] == "bfloat16"
    assert load_report(path)["detections"]["meets"] is False
