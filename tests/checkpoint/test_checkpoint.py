"""Checkpoint reading, layout handling, preset inference, state-dict adaptation and atomic saving."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.checkpoint import (
    PATCH_EMBED_KEY,
    POS_EMBED_KEY,
    CheckpointError,
    adapt_state_dict,
    checkpoint_args,
    checkpoint_class_names,
    extract_state_dict,
    infer_model_config,
    interpolate_pos_embed,
    load_checkpoint_file,
    load_into,
    make_checkpoint,
    read_shapes,
    save_checkpoint,
    slice_queries,
)
from rfdetr.config import MODEL_PRESETS, ModelConfig
from tests.helpers import REFS

REPO_ROOT = Path(__file__).resolve().parents[2]
LEGACY_REF = REFS / "rf-detr-nano-perturbed-random.legacy.pth"
needs_ref = pytest.mark.skipif(not LEGACY_REF.is_file(), reason=f"reference checkpoint not found at {LEGACY_REF}")


def fake_state_dict(cfg: ModelConfig, query_rows_per_group: int | None = None) -> dict[str, torch.Tensor]:
    """A minimal state dict with the keys and shapes that identify a preset (not a full model)."""
    c, d, g = cfg.vit_width, cfg.hidden_dim, cfg.group_detr
    q = query_rows_per_group or cfg.num_queries
    k = cfg.num_classes + 1
    sd = {
        PATCH_EMBED_KEY: torch.randn(c, 3, cfg.patch_size, cfg.patch_size),
        POS_EMBED_KEY: torch.randn(1, cfg.positional_encoding_size**2 + 1, c),
        "query_feat.weight": torch.randn(g * q, d),
        "refpoint_embed.weight": torch.randn(g * q, 4),
        "class_embed.weight": torch.randn(k, d),
        "class_embed.bias": torch.randn(k),
        "bbox_embed.layers.2.weight": torch.randn(4, d),
    }
    for i in range(len(cfg.projector_scale)):
        sd[f"backbone.0.projector.stages.{i}.1.weight"] = torch.randn(d)
    for layer in range(cfg.dec_layers):
        sd[f"transformer.decoder.layers.{layer}.norm1.weight"] = torch.randn(d)
        if cfg.segmentation_head:
            sd[f"segmentation_head.blocks.{layer}.norm.weight"] = torch.randn(d)
    for group in range(g):
        sd[f"transformer.enc_output.{group}.weight"] = torch.randn(d, d)
        sd[f"transformer.enc_out_class_embed.{group}.weight"] = torch.randn(k, d)
        sd[f"transformer.enc_out_class_embed.{group}.bias"] = torch.randn(k)
    if cfg.segmentation_head:
        sd["segmentation_head.bias"] = torch.zeros(1)
    return sd


class DictModule(nn.Module):
    """A module whose parameters have exactly the given names and shapes (stands in for the detector)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        for name, shape in shapes.items():
            *parents, leaf = name.split(".")
            module: nn.Module = self
            for part in parents:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            module.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))


# --------------------------------------------------------------------------------------------------- file reading


def test_load_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint_file(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_checkpoint_file(tmp_path)


@pytest.mark.parametrize("content", [b"hello world", b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64])
def test_load_non_checkpoint_raises(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a"):
        load_checkpoint_file(path)


def test_load_truncated_raises(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    torch.save({"model": {"a": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint_file(path)


class _Custom:
    pass


def test_load_disallowed_global_names_it(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    torch.save({"model": {"a": torch.zeros(1)}, "extra": _Custom()}, path)
    with pytest.raises(CheckpointError, match="_Custom"):
        load_checkpoint_file(path)


def test_load_namespace_allowed(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    torch.save({"model": {"a": torch.zeros(1)}, "args": argparse.Namespace(num_classes=3)}, path)
    ckpt = load_checkpoint_file(path)
    assert checkpoint_args(ckpt) == {"num_classes": 3}


# --------------------------------------------------------------------------------------------------- layouts


def test_extract_layouts() -> None:
    sd = {"class_embed.bias": torch.zeros(3), "query_feat.weight": torch.zeros(2, 2)}
    expected = set(sd)
    with_kp = {**sd, "_kp_active_mask": torch.zeros(0, 0, dtype=torch.bool)}
    layouts = {
        "published": {"model": with_kp, "args": argparse.Namespace(num_classes=2)},
        "rfdetr>=1.7": {
            "model": with_kp,
            "state_dict": {f"model.{k}": v for k, v in with_kp.items()},
            "args": {"num_classes": 2},
            "model_name": "RFDETRNano",
            "model_config": {"resolution": 384},
        },
        "lightning": {"state_dict": {f"model._orig_mod.{k}": v for k, v in sd.items()}, "epoch": 3},
        "ddp": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "bare": dict(with_kp),
    }
    for name, ckpt in layouts.items():
        got = extract_state_dict(ckpt)
        assert set(got) == expected, name


def test_extract_errors() -> None:
    with pytest.raises(CheckpointError, match="no model weights"):
        extract_state_dict({"epoch": 1, "args": {}})
    with pytest.raises(CheckpointError, match="LoRA"):
        extract_state_dict({"model": {"backbone.0.encoder.base_model.model.x.lora_A.weight": torch.zeros(1)}})


def test_args_and_class_names() -> None:
    assert checkpoint_args({"args": argparse.Namespace(a=1)}) == {"a": 1}
    assert checkpoint_args({"args": {"a": 1}}) == {"a": 1}
    assert checkpoint_args({}) == {}
    assert checkpoint_class_names({"class_names": ["a", "b"]}) == ["a", "b"]
    assert checkpoint_class_names({"args": argparse.Namespace(class_names=["x"])}) == ["x"]
    assert checkpoint_class_names({"args": {"class_names": ["y"]}}) == ["y"]
    assert checkpoint_class_names({"args": argparse.Namespace(num_classes=2)}) is None
    assert checkpoint_class_names({"class_names": None, "args": {"class_names": []}}) is None


# --------------------------------------------------------------------------------------------------- inference


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_infer_every_preset_by_shape(name: str) -> None:
    preset = MODEL_PRESETS[name]
    cfg = infer_model_config(fake_state_dict(preset))
    assert cfg == preset


def test_infer_seglarge_300_query_quirk() -> None:
    """Spec 12.6: the seg-large file likely stores 300 queries per group; rfdetr keeps 200 (the preset)."""
    preset = MODEL_PRESETS["seg-large"]
    sd = fake_state_dict(preset, query_rows_per_group=300)
    cfg = infer_model_config(sd)
    assert cfg.name == "seg-large" and cfg.num_queries == 200
    adapted, report = adapt_state_dict(sd, cfg)
    assert adapted["query_feat.weight"].shape == (13 * 200, 256)
    assert sorted(report.sliced) == ["query_feat.weight", "refpoint_embed.weight"]


def test_infer_fewer_queries_and_classes() -> None:
    sd = fake_state_dict(MODEL_PRESETS["nano"].replace(num_queries=100, num_classes=3))
    cfg = infer_model_config(sd)
    assert (cfg.name, cfg.num_queries, cfg.num_classes) == ("nano", 100, 3)


def test_infer_changed_resolution() -> None:
    """A Nano fine-tuned at 512 stores a 32x32 grid (pe = resolution / patch)."""
    sd = fake_state_dict(MODEL_PRESETS["nano"].replace(positional_encoding_size=32))
    cfg = infer_model_config(sd)
    assert (cfg.name, cfg.positional_encoding_size, cfg.resolution) == ("nano", 32, 512)


def test_infer_uses_saved_names_and_config() -> None:
    # Medium and Large 2026 have the same structure; model_name picks, the stored grid follows the tensor.
    sd = fake_state_dict(MODEL_PRESETS["medium"].replace(positional_encoding_size=40))
    assert infer_model_config(sd, {"model_name": "RFDETRLarge"}).name == "large"
    ours = {"model_config": {"name": "medium", "resolution": 640, "num_select": 50}, "class_names": ["a", "b"]}
    cfg = infer_model_config(sd, ours)
    assert (cfg.name, cfg.resolution, cfg.num_select, cfg.class_names) == ("medium", 640, 50, ("a", "b"))
    # A model_name that does not fit the tensors is ignored (with a warning), not trusted.
    assert infer_model_config(fake_state_dict(MODEL_PRESETS["nano"]), {"model_name": "RFDETRSegNano"}).name == "nano"
    assert infer_model_config(sd, {"args": argparse.Namespace(resolution=704)}).resolution == 704


def test_infer_unknown_architecture_lists_shapes() -> None:
    sd = fake_state_dict(MODEL_PRESETS["nano"].replace(dec_layers=7))
    with pytest.raises(CheckpointError, match=r"patch_size=16.*dec_layers=7"):
        infer_model_config(sd)
    with pytest.raises(CheckpointError, match="not an RF-DETR state dict"):
        read_shapes({"foo": torch.zeros(1)})


@needs_ref
def test_reference_legacy_file() -> None:
    ckpt = load_checkpoint_file(LEGACY_REF)
    assert isinstance(ckpt["args"], argparse.Namespace)
    sd = extract_state_dict(ckpt)
    assert len(sd) == 465 and "_kp_active_mask" not in sd
    cfg = infer_model_config(sd, ckpt)
    assert cfg == MODEL_PRESETS["nano"]
    assert checkpoint_class_names(ckpt) is None


# --------------------------------------------------------------------------------------------------- adaptation


def test_adapt_class_change_drops_heads_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    sd = fake_state_dict(MODEL_PRESETS["nano"])
    cfg = MODEL_PRESETS["nano"].replace(num_classes=4)
    with caplog.at_level(logging.INFO, logger="rfdetr.checkpoint"):
        adapted, report = adapt_state_dict(sd, cfg)
    class_keys = {k for k in sd if k.startswith(("class_embed.", "transformer.enc_out_class_embed."))}
    assert len(class_keys) == 2 + 2 * 13
    assert set(report.reinitialized) == class_keys
    assert not class_keys & set(adapted)
    assert "re-initialising 28 class-head tensors" in caplog.text
    assert "91 logits, model 5" in caplog.text


def test_interpolate_pos_embed_matches_bicubic_antialias() -> None:
    pos = torch.randn(1, 24 * 24 + 1, 8, dtype=torch.float64)
    out = interpolate_pos_embed(pos, 32)
    assert out.shape == (1, 32 * 32 + 1, 8) and out.dtype == torch.float64
    assert torch.equal(out[:, 0], pos[:, 0])
    grid = pos[:, 1:].reshape(1, 24, 24, 8).permute(0, 3, 1, 2).float()
    ref = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(out[:, 1:].float(), ref.permute(0, 2, 3, 1).reshape(1, 1024, 8))
    assert interpolate_pos_embed(pos, 24) is pos


def test_adapt_resolution_interpolates() -> None:
    sd = fake_state_dict(MODEL_PRESETS["nano"])
    adapted, report = adapt_state_dict(sd, MODEL_PRESETS["nano"].replace(positional_encoding_size=20))
    assert report.interpolated == [POS_EMBED_KEY]
    assert adapted[POS_EMBED_KEY].shape == (1, 401, 384)


def test_slice_queries_per_group() -> None:
    table = torch.arange(13 * 5, dtype=torch.float32).reshape(13 * 5, 1)
    out = slice_queries(table, 13, 13, 2)
    assert out.flatten().tolist() == [v for g in range(13) for v in (5 * g, 5 * g + 1)]
    assert slice_queries(table, 13, 1, 3).flatten().tolist() == [0, 1, 2]
    with pytest.raises(CheckpointError):
        slice_queries(table, 13, 13, 6)


def test_adapt_mismatch_names_keys_and_shapes() -> None:
    seg_nano = fake_state_dict(MODEL_PRESETS["seg-nano"])
    target = {k: torch.zeros(v.shape) for k, v in fake_state_dict(MODEL_PRESETS["nano"]).items()}
    with pytest.raises(CheckpointError) as info:
        adapt_state_dict(seg_nano, target)
    message = str(info.value)
    assert f"{PATCH_EMBED_KEY}: checkpoint [384, 3, 12, 12] vs model [384, 3, 16, 16]" in message
    assert "query_feat.weight: checkpoint [1300, 256] vs model [3900, 256]" in message  # queries never grow
    adapted, report = adapt_state_dict(seg_nano, target, strict=False)
    assert PATCH_EMBED_KEY not in adapted and len(report.mismatched) == 3


def test_load_into_reports_and_raises(caplog: pytest.LogCaptureFixture) -> None:
    nano = MODEL_PRESETS["nano"]
    sd = fake_state_dict(nano)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    model = DictModule(shapes)
    report = load_into(model, sd)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert torch.equal(model.state_dict()["query_feat.weight"], sd["query_feat.weight"])

    # A detector checkpoint may seed a segmentation model: the missing mask head is only logged.
    seg_model = DictModule({**shapes, "segmentation_head.bias": (1,)})
    with caplog.at_level(logging.WARNING, logger="rfdetr.checkpoint"):
        report = load_into(seg_model, sd)
    assert report.missing == ["segmentation_head.bias"] and "no segmentation head" in caplog.text

    # Other missing / unexpected keys are errors unless strict_detector=False.
    bigger = DictModule({**shapes, "transformer.decoder.layers.5.norm1.weight": (256,)})
    with pytest.raises(CheckpointError, match=r"missing 1 keys: transformer\.decoder\.layers\.5"):
        load_into(bigger, sd)
    report = load_into(bigger, {**sd, "extra.weight": torch.zeros(1)}, strict_detector=False)
    assert report.unexpected == ["extra.weight"] and report.missing == ["transformer.decoder.layers.5.norm1.weight"]

    # A class-count change leaves the model's own init in the class heads and is not an error.
    few = DictModule({k: (4, *v[1:]) if "class_embed" in k else v for k, v in shapes.items()})
    report = load_into(few, sd)
    assert len(report.reinitialized) == 28 and set(report.missing) == set(report.reinitialized)


# --------------------------------------------------------------------------------------------------- saving


def test_make_and_save_roundtrip(tmp_path: Path) -> None:
    cfg = MODEL_PRESETS["nano"].replace(num_classes=2)
    sd = fake_state_dict(cfg)
    sd["_kp_active_mask"] = torch.zeros(0, 0, dtype=torch.bool)
    ckpt = make_checkpoint(sd, cfg, ["cat", "dog"], stage="detector", epoch=3)
    path = save_checkpoint(ckpt, tmp_path / "sub" / "ckpt.pth")
    assert sorted(os.listdir(path.parent)) == ["ckpt.pth"]  # no temp file left behind

    loaded = load_checkpoint_file(path)
    args = loaded["args"]
    assert isinstance(args, argparse.Namespace)
    for key in ("num_classes", "class_names", "resolution", "encoder", "hidden_dim", "dec_layers", "sa_nheads",
                "ca_nheads", "dec_n_points", "num_queries", "num_select", "group_detr", "out_feature_indexes",
                "projector_scale", "two_stage", "bbox_reparam", "lite_refpoint_refine", "layer_norm",
                "segmentation_head", "mask_downsample_ratio", "patch_size", "num_windows"):
        assert hasattr(args, key), key
    assert args.class_names == ["cat", "dog"] and args.num_classes == 2 and args.projector_scale == ["P4"]
    assert (loaded["model_name"], loaded["stage"], loaded["epoch"]) == ("RFDETRNano", "detector", 3)
    assert "_kp_active_mask" not in loaded["model"]
    got = infer_model_config(extract_state_dict(loaded), loaded)
    assert got == cfg and got.class_names == ("cat", "dog")
    assert checkpoint_class_names(loaded) == ["cat", "dog"]


def test_save_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.pth"
    save_checkpoint({"model": {"a": torch.ones(3)}}, path)
    before = path.read_bytes()

    def broken_save(obj: object, f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {"a": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pth"]
