"""Checkpoint surgery: shrink_head.py keeps classes by name and slices every class tensor; strip_class_heads.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import shrink_head
import strip_class_heads
from rfdetr.checkpoint import extract_state_dict, load_checkpoint_file, make_checkpoint, save_checkpoint
from rfdetr.checkpoint.surgery import class_head_keys, head_layout, is_class_key
from rfdetr.config import MODEL_PRESETS
from rfdetr.data.coco_classes import COCO_CLASSES
from rfdetr.models import build_model
from tests.helpers import REFS, SHARED, shared_path
from tests.tolerances import reordered_sum_bound

REF_CKPT = REFS / "rf-detr-nano-perturbed-random.legacy.pth"
NAMES = ["apple", "banana", "cherry", "date", "elderberry"]
# A small nano: full ViT-S (so the keys are the real ones) on a 64x64 input with 10 queries and one decoder layer.
TINY = MODEL_PRESETS["nano"].replace(resolution=64, positional_encoding_size=4, num_queries=10, num_select=10,
                                     dec_layers=1, num_classes=len(NAMES))


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    with torch.no_grad():
        # Random class heads so that every logit row differs (fresh heads may share one prior bias).
        for name, p in model.named_parameters():
            if is_class_key(name):
                p.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    ckpt = make_checkpoint(tiny_model.state_dict(), TINY, NAMES, optimizer={"state": {}, "param_groups": []}, epoch=3)
    save_checkpoint(ckpt, path)
    return path


def run_shrink(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = shrink_head.main(shrink_head.get_args_parser().parse_args(list(argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)["pred_logits"]


def test_shrink_by_name_slices_every_class_tensor(tiny_ckpt: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    out_path = tmp_path / "two.pth"
    code, out, err = run_shrink(capsys, "--in_ckpt", str(tiny_ckpt), "--out_ckpt", str(out_path),
                                "--keep", "date", "banana")
    assert code == 0, err
    before, after = load_checkpoint_file(tiny_ckpt), load_checkpoint_file(out_path)
    keys = class_head_keys(after["model"])
    assert len(keys) == 2 + 2 * 13  # class_embed + the 13 two-stage encoder heads
    order = [3, 1, 5]  # date, banana, then the spare background row (row K of a K-class head)
    for key in keys:
        assert torch.equal(after["model"][key], before["model"][key][order])
    for key, value in before["model"].items():
        if key not in keys:
            assert torch.equal(after["model"][key], value), key  # everything else bit-identical
    assert after["args"].num_classes == 2 and after["args"].class_names == ["date", "banana"]
    assert after["class_names"] == ["date", "banana"] and after["model_config"]["num_classes"] == 2
    assert "optimizer" not in after and after["epoch"] == 3
    assert "date (row 3)" in out and "banana (row 1)" in out


def test_shrunk_checkpoint_loads_strictly_and_keeps_logits(tiny_model: torch.nn.Module, tiny_ckpt: Path,
                                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # The two-stage proposals are ranked by the max over ALL class logits, so dropping classes may change which
    # proposals the decoder sees. Make the kept classes dominate that max in the original, so the selection is the
    # same and the comparison isolates the head surgery.
    src = tmp_path / "dominant.pth"
    ckpt = load_checkpoint_file(tiny_ckpt)
    state = dict(ckpt["model"])
    for key in class_head_keys(state):
        if key.startswith("transformer.enc_out_class_embed.") and key.endswith("bias"):
            state[key] = state[key].clone()
            state[key][[3, 1]] += 50.0
    ckpt["model"] = state
    save_checkpoint(ckpt, src)
    original = build_model(TINY).eval()
    original.load_state_dict(state, strict=True)

    dst = tmp_path / "two.pth"
    assert run_shrink(capsys, "--in_ckpt", str(src), "--out_ckpt", str(dst), "--keep", "date", "banana")[0] == 0
    shrunk = build_model(TINY.replace(num_classes=2)).eval()
    shrunk.load_state_dict(load_checkpoint_file(dst)["model"], strict=True)  # zero missing / unexpected keys

    x = torch.randn(2, 3, 64, 64)
    a, b = logits(original, x), logits(shrunk, x)
    assert b.shape[-1] == 3
    # The kept rows are bit-equal; only the class heads' output width changes, so BLAS may sum the K = D = 64
    # products in another order. float32 bound K x 2^-24 x magnitude (|logits| <= 19): 7e-5 worst case, sqrt(K) x
    # 2^-24 x 19 = 9e-6 for one sigma of random rounding; tests.tolerances.reordered_sum_bound allows 4 sigmas
    # (3.6e-5). Measured 2.9e-6 (1.5 ulps, Zen 4).
    bound = reordered_sum_bound(TINY.hidden_dim, float(a.abs().max()))
    torch.testing.assert_close(b, a[..., [3, 1, 5]], rtol=0, atol=bound)


def test_class_head_alone_is_sliced_exactly(tiny_model: torch.nn.Module, tiny_ckpt: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    dst = tmp_path / "three.pth"
    assert run_shrink(capsys, "--in_ckpt", str(tiny_ckpt), "--out_ckpt", str(dst),
                      "--keep", "elderberry", "apple", "cherry")[0] == 0
    sd = load_checkpoint_file(dst)["model"]
    rows = [4, 0, 2, 5]  # the three kept classes in --keep order, then the spare background row
    assert torch.equal(sd["class_embed.weight"], tiny_model.class_embed.weight.detach()[rows])
    assert torch.equal(sd["class_embed.bias"], tiny_model.class_embed.bias.detach()[rows])
    features = torch.randn(7, TINY.hidden_dim)
    full = tiny_model.class_embed(features)
    cut = torch.nn.functional.linear(features, sd["class_embed.weight"], sd["class_embed.bias"])
    # Bit-equal weights; the products may differ in the last bits since BLAS picks kernels by output width. float32
    # bound as above (K = 64, |logits| <= 17.5): 6.7e-5 worst case, 8e-6 for one sigma of random rounding, 3.3e-5 for
    # 4 sigmas (reordered_sum_bound). Measured 3.8e-6 (2 ulps, Zen 4).
    bound = reordered_sum_bound(features.shape[1], float(full.abs().max()))
    torch.testing.assert_close(cut, full[:, rows], rtol=0, atol=bound)


def test_keep_ids_and_dataset(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                              synthetic_dir: Path) -> None:
    dst = tmp_path / "ids.pth"
    assert run_shrink(capsys, "--in_ckpt", str(tiny_ckpt), "--out_ckpt", str(dst), "--keep_ids", "2", "0")[0] == 0
    assert load_checkpoint_file(dst)["class_names"] == ["cherry", "apple"]
    # --dataset keeps the dataset's classes by name: the synthetic dataset's are circle/square/triangle.
    ckpt = load_checkpoint_file(tiny_ckpt)
    ckpt["class_names"] = ckpt["args"].class_names = ["square", "x", "triangle", "circle", "y"]
    src = tmp_path / "shapes.pth"
    save_checkpoint(ckpt, src)
    dst = tmp_path / "ds.pth"
    code, out, err = run_shrink(capsys, "--in_ckpt", str(src), "--out_ckpt", str(dst), "--dataset", str(synthetic_dir))
    assert code == 0, err
    after = load_checkpoint_file(dst)
    assert after["class_names"] == ["circle", "square", "triangle"]
    assert torch.equal(after["model"]["class_embed.bias"], ckpt["model"]["class_embed.bias"][[3, 0, 2, 5]])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep", "bananna"], "unknown class name(s): 'bananna' (did you mean: banana"),
        (["--keep", "Apple"], "did you mean: apple"),
        (["--keep", "apple", "apple"], "duplicate names in --keep: ['apple']"),
        (["--keep_ids", "9"], "out of range"),
    ],
)
def test_errors_exit_2_and_write_nothing(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         argv: list[str], message: str) -> None:
    dst = tmp_path / "never.pth"
    code, _, err = run_shrink(capsys, "--in_ckpt", str(tiny_ckpt), "--out_ckpt", str(dst), *argv)
    assert code == 2 and message in err, err
    assert not dst.exists() and list(tmp_path.iterdir()) == []


def test_unknown_name_lists_available(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, _, err = run_shrink(capsys, "--in_ckpt", str(tiny_ckpt), "--out_ckpt", str(tmp_path / "o.pth"), "--keep", "kiwi")
    assert "Available (class names (row i = class i)): apple, banana, cherry, date, elderberry" in err


def test_empty_keep_is_refused_by_the_parser(tiny_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        shrink_head.get_args_parser().parse_args(["--in_ckpt", str(tiny_ckpt), "--out_ckpt", "o.pth", "--keep"])
    assert e.value.code == 2


def test_output_path_rules(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = tiny_ckpt.read_bytes()
    code, _, err = run_shrink(capsys, "--in_ckpt", str(tiny_ckpt), "--out_ckpt", str(tiny_ckpt), "--keep", "apple")
    assert code == 2 and "is the input" in err
    assert tiny_ckpt.read_bytes() == before
    existing = tmp_path / "exists.pth"
    existing.write_bytes(b"keep me")
    code, _, err = run_shrink(capsys, "--in_ckpt", str(tiny_ckpt), "--out_ckpt", str(existing), "--keep", "apple")
    assert code == 2 and "already exists" in err and existing.read_bytes() == b"keep me"
    code, _, _ = run_shrink(capsys, "--in_ckpt", str(tiny_ckpt), "--out_ckpt", str(existing), "--keep", "apple",
                            "--force")
    assert code == 0 and load_checkpoint_file(existing)["class_names"] == ["apple"]


def test_dry_run_writes_nothing(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dst = tmp_path / "dry.pth"
    code, out, _ = run_shrink(capsys, "--in_ckpt", str(tiny_ckpt), "--out_ckpt", str(dst), "--keep", "apple",
                              "--dry_run")
    assert code == 0 and "dry run" in out and "class_embed" not in out or "sliced" in out
    assert not dst.exists()


def test_checkpoint_without_class_heads(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stripped = tmp_path / "stripped.pth"
    assert strip_class_heads.main(argparse.Namespace(in_ckpt=str(tiny_ckpt), out_ckpt=str(stripped),
                                                     force=False)) == 0
    capsys.readouterr()
    code, _, err = run_shrink(capsys, "--in_ckpt", str(stripped), "--out_ckpt", str(tmp_path / "o.pth"),
                              "--keep", "apple")
    assert code == 2 and "no class head" in err


def test_strip_class_heads(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dst = tmp_path / "stripped.pth"
    code = strip_class_heads.main(strip_class_heads.get_args_parser().parse_args([str(tiny_ckpt), str(dst)]))
    out = capsys.readouterr().out
    assert code == 0
    after = load_checkpoint_file(dst)
    assert class_head_keys(after["model"]) == [] and "optimizer" not in after
    assert "removed 29 entries" in out and "model: class_embed.weight" in out and "optimizer (training state)" in out
    # Initializes a model with any class count; only the removed keys are missing.
    model = build_model(TINY.replace(num_classes=11))
    result = model.load_state_dict(after["model"], strict=False)
    assert sorted(result.missing_keys) == sorted(class_head_keys(model.state_dict()))
    assert result.unexpected_keys == []
    assert strip_class_heads.main(argparse.Namespace(in_ckpt=str(tiny_ckpt), out_ckpt=str(dst), force=False)) == 2


def test_official_layout_by_coco_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The published rfdetr layout (Namespace args, 91 COCO slots): names resolve to COCO category ids."""
    shared_path(REF_CKPT.relative_to(SHARED))
    dst = tmp_path / "coco2.pth"
    code, out, err = run_shrink(capsys, "--in_ckpt", str(REF_CKPT), "--out_ckpt", str(dst),
                                "--keep", "dog", "person")
    assert code == 0, err
    before, after = load_checkpoint_file(REF_CKPT), load_checkpoint_file(dst)
    assert isinstance(after["args"], argparse.Namespace)  # format kept, so rfdetr still reads it
    assert after["args"].num_classes == 2 and after["args"].class_names == ["dog", "person"]
    rows = [COCO_CLASSES.index("dog"), COCO_CLASSES.index("person"), 0]
    for key in class_head_keys(before["model"]):
        assert torch.equal(after["model"][key], before["model"][key][rows])
    model = build_model(MODEL_PRESETS["nano"].replace(num_classes=2))
    model.load_state_dict(extract_state_dict(after), strict=True)  # drops rfdetr's empty _kp_active_mask


def test_training_layout_keeps_its_format(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """rfdetr >= 1.7 training layout: dict args, model_config, and a Lightning ``state_dict`` copy, all updated."""
    shared_path(REF_CKPT.relative_to(SHARED))
    legacy = load_checkpoint_file(REF_CKPT)
    src = tmp_path / "new_layout.pth"
    save_checkpoint({
        "model": legacy["model"],
        "state_dict": {f"model.{k}": v for k, v in legacy["model"].items()},
        "args": {**vars(legacy["args"]), "class_names": [f"c{i}" for i in range(90)]},
        "model_config": {"num_classes": 90, "resolution": 384},
        "model_name": "RFDETRNano", "epoch": 5, "optimizer_states": [], "lr_schedulers": [],
    }, src)
    dst = tmp_path / "out.pth"
    code, _, err = run_shrink(capsys, "--in_ckpt", str(src), "--out_ckpt", str(dst), "--keep", "c4", "c7")
    assert code == 0, err
    after = load_checkpoint_file(dst)
    assert isinstance(after["args"], dict) and after["args"]["num_classes"] == 2
    assert after["model_config"]["num_classes"] == 2 and after["model_name"] == "RFDETRNano"
    assert after["state_dict"]["model.class_embed.bias"].shape == (3,)
    assert after["model"]["transformer.enc_out_class_embed.12.weight"].shape == (3, 256)
    # 90 names for 91 rows: names are rows 0..89 and the last row is the spare.
    assert torch.equal(after["model"]["class_embed.bias"], legacy["model"]["class_embed.bias"][[4, 7, 90]])


def test_head_layout_conventions() -> None:
    assert head_layout(4, ["a", "b", "c"]).rows == (0, 1, 2)
    old = head_layout(5, ["a", "b", "c"])  # rfdetr <= 1.5: category ids are rows, row 0 the placeholder
    assert old.rows == (1, 2, 3) and old.spare_row == 0
    coco = head_layout(91, None, COCO_CLASSES)
    assert coco.row_of("person") == 1 and coco.row_of("toothbrush") == 90 and "N/A" not in coco.names
