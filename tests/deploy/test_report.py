"""The export report judges what a user relies on: matched detections above the threshold, within the tolerance the
format states for the file's precision; the raw slot-by-slot differences are reported, labelled, and judge nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rfdetr.deploy.export import report as report_module
from rfdetr.deploy.export.agreement import FLOAT_BOUNDS, compare_detections, stated_bound
from rfdetr.deploy.export.formats import get_format
from rfdetr.deploy.export.report import build_report, format_report, write_report

FLOAT32 = FLOAT_BOUNDS["float32"]


def _outputs(masks: bool = True) -> list[torch.Tensor]:
    """One image, 6 queries, 3 classes: query 0 a confident class-1 object; queries 1 and 2 two different objects
    of class 0 whose scores tie to 1e-6 (0.6); the rest below any threshold. Mask logits [1, 6, 8, 8]."""
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.2],
                           [0.5, 0.5, 0.2, 0.2], [0.3, 0.7, 0.2, 0.2], [0.7, 0.3, 0.2, 0.2]]])
    logits = torch.full((1, 6, 3), -6.0)
    logits[0, 0, 1] = 3.0
    logits[0, 1, 0] = 0.405465
    logits[0, 2, 0] = 0.405469
    out = [boxes, logits]
    if masks:
        mask = torch.full((1, 6, 8, 8), -8.0)
        mask[0, 0, 2:6, 2:6] = 8.0
        mask[0, 1, 0:2, 0:2] = 8.0
        mask[0, 2, 6:8, 5:8] = 8.0
        out.append(mask)
    return out


def _swapped(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The near-tied queries 1 and 2 trade slots (as another runtime's rounding may order them)."""
    order = torch.tensor([0, 2, 1, 3, 4, 5])
    return [t[:, order] for t in outputs]


def test_slots_that_trade_places_meet_the_tolerance() -> None:
    ours, theirs = _outputs(), _swapped(_outputs())
    assert float((ours[0] - theirs[0]).abs().max()) > 0.5  # the raw slot-by-slot difference alarms...
    result = compare_detections(ours, theirs, FLOAT32)
    assert result["meets"] and result["compared"] == 3 and result["missing"] == result["extra"] == 0  # ...wrongly
    assert result["min_box_iou"] == 1.0 and result["min_mask_iou"] == 1.0 and result["max_score_diff"] < 1e-5


def test_a_moved_box_a_lost_object_an_invented_one_and_a_changed_mask_fail() -> None:
    moved = _outputs()
    moved[0][0, 0, 0] += 0.05
    assert compare_detections(_outputs(), moved, FLOAT32)["missing"] == 1
    lost = _outputs()
    lost[1][0, 0, 1] = -6.0
    assert compare_detections(_outputs(), lost, FLOAT32)["missing"] == 1
    invented = _outputs()
    invented[1][0, 4, 2] = 4.0
    result = compare_detections(_outputs(), invented, FLOAT32)
    assert result["extra"] == 1 and not result["meets"]
    changed = _outputs()
    changed[2][0, 0, 2:6, 2:4] = -8.0
    result = compare_detections(_outputs(), changed, FLOAT32)
    assert result["missing"] == 1 and result["min_mask_iou"] == 0.5


def test_near_the_threshold_a_detection_may_come_and_go() -> None:
    """A score within the bound of the threshold may cross it in either direction without failing the file."""
    ours, theirs = _outputs(masks=False), _outputs(masks=False)
    theirs[1][0, 1, 0] = 0.0  # the file scores one of the two 0.6 objects 0.5
    result = compare_detections(ours, theirs, FLOAT32, threshold=0.5999)
    # Both 0.6 objects sit within the bound (1e-3) of the threshold: only the 0.95 object had to be found.
    assert result["meets"] and result["compared"] == 1
    assert not compare_detections(ours, theirs, FLOAT32, threshold=0.5)["meets"]  # at 0.5, 0.6 -> 0.5 is a change


def test_int8_bound_is_the_registry_one() -> None:
    for name in ("onnx", "openvino", "tflite"):
        fmt = get_format(name)
        assert stated_bound(fmt, "int8").score == fmt.int8.score_tolerance  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="executorch has no INT8 files"):
        stated_bound(get_format("executorch"), "int8")


class _Module(torch.nn.Module):
    with_masks = True

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_outputs())


def test_report_says_meets_and_labels_the_raw_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file whose slots trade places on the check input: the verdict is MEETS, the raw figure says it is none."""
    session = SimpleNamespace(run=lambda feed: [t.numpy() for t in _swapped(_outputs())])
    monkeypatch.setattr(report_module, "load_format", lambda fmt: SimpleNamespace(Session=lambda path: session))
    path = tmp_path / "inference_model.onnx"
    path.write_bytes(b"x")
    report = build_report(path, get_format("onnx"), "float32", _Module(), [torch.zeros(1, 3, 32, 32).numpy()], 1.0,
                          num_select=6, compared_on="1 check image(s)")
    assert report["max_abs_diff_vs_pytorch_float32"]["boxes"] > 0.5 and report["detections"]["meets"]
    text = format_report(report)
    assert "MEETS the onnx float32 tolerance: 3 detections above 0.5 on 1 check image(s)" in text
    assert "raw outputs slot by slot (near-tied proposals may trade slots, no verdict)" in text
    session.run = lambda feed: [t.numpy() for t in _outputs()[:1]] + [(_outputs()[1] - 9.0).numpy(),
                                                                       _outputs()[2].numpy()]
    report = build_report(path, get_format("onnx"), "float32", _Module(), [torch.zeros(1, 3, 32, 32).numpy()], 1.0,
                          num_select=6)
    with caplog.at_level(logging.INFO, logger=report_module.__name__):
        write_report(path, report)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "DOES NOT MEET the onnx float32 tolerance: of 3 detections above 0.5 on 1 random input, 3 missing" in \
        caplog.records[0].getMessage()
