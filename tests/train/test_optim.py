"""Parameter groups (spec section 3 table), the LR schedule (2.4) and the optimizer / scheduler builders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rfdetr.train.config import OptimConfig
from rfdetr.train.optim import (
    autocast_dtype,
    build_grad_scaler,
    build_optimizer,
    build_scheduler,
    lr_factor,
    param_groups,
    steps_per_epoch,
)

DEFAULTS = OptimConfig()
KW = dict(lr=DEFAULTS.lr, lr_encoder=DEFAULTS.lr_encoder, weight_decay=DEFAULTS.weight_decay,
          lr_vit_layer_decay=DEFAULTS.lr_vit_layer_decay, lr_component_decay=DEFAULTS.lr_component_decay)
ENC = 1.5e-4 * 0.7**2  # 7.35e-5: encoder LR before the layer-wise decay


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(4)
        self.attention = nn.Linear(4, 4)
        self.layer_scale1 = nn.Module()
        self.layer_scale1.lambda1 = nn.Parameter(torch.ones(4))


class _Embeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 5, 4))
        self.patch_embeddings = nn.Conv2d(3, 4, 2)


class StandIn(nn.Module):
    """Parameter names as in the real model: backbone.0.encoder.encoder.{embeddings,encoder.layer.<b>,layernorm}."""

    def __init__(self, depth: int = 12) -> None:
        super().__init__()
        vit = nn.Module()
        vit.embeddings = _Embeddings()
        vit.encoder = nn.Module()
        vit.encoder.layer = nn.ModuleList(_Block() for _ in range(depth))
        vit.layernorm = nn.LayerNorm(4)
        dino = nn.Module()
        dino.encoder = vit
        backbone = nn.Module()
        backbone.encoder = dino
        backbone.projector = nn.Linear(4, 4)
        self.backbone = nn.ModuleList([backbone])
        self.transformer = nn.Module()
        self.transformer.decoder = nn.Module()
        self.transformer.decoder.layers = nn.ModuleList([nn.Linear(4, 4), nn.LayerNorm(4)])
        self.transformer.enc_output = nn.Linear(4, 4)
        self.class_embed = nn.Linear(4, 3)


def _lookup(model: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr, weight_decay) of the group holding it."""
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


@pytest.mark.parametrize(("ofi", "embed_lr", "block0_lr", "block11_lr"), [
    ((3, 6, 9, 12), 3.23e-6, 4.04e-6, 4.70e-5),   # L = 13: every current variant
    ((2, 5, 8, 11), 4.04e-6, 5.05e-6, 5.88e-5),   # L = 12: legacy Base
])
def test_section3_table(ofi: tuple[int, ...], embed_lr: float, block0_lr: float, block11_lr: float) -> None:
    model = StandIn()
    groups = param_groups(model, out_feature_indexes=ofi, **KW)
    got = _lookup(model, groups)
    vit = "backbone.0.encoder.encoder."
    approx = pytest.approx  # the table is printed with 3 significant digits
    assert got[vit + "embeddings.position_embeddings"] == (approx(embed_lr, rel=2e-3), 0.0)
    assert got[vit + "embeddings.patch_embeddings.weight"] == (approx(embed_lr, rel=2e-3), 0.0)
    assert got[vit + "encoder.layer.0.attention.weight"] == (approx(block0_lr, rel=2e-3), 1e-4)
    assert got[vit + "encoder.layer.0.attention.bias"] == (approx(block0_lr, rel=2e-3), 0.0)
    assert got[vit + "encoder.layer.0.norm1.weight"][1] == 0.0
    assert got[vit + "encoder.layer.0.layer_scale1.lambda1"][1] == 1e-4  # LayerScale is decayed
    assert got[vit + "encoder.layer.11.attention.weight"][0] == approx(block11_lr, rel=2e-3)
    L = ofi[-1] + 1
    assert got[vit + "encoder.layer.5.attention.weight"][0] == approx(ENC * 0.8 ** (L - 5))
    assert got[vit + "layernorm.weight"] == (approx(ENC), 0.0)  # exponent 0
    assert got["transformer.decoder.layers.0.weight"] == (approx(7e-5), 1e-4)
    assert got["transformer.decoder.layers.1.bias"] == (approx(7e-5), 1e-4)  # decoder norms/biases decayed
    for name in ("backbone.0.projector.weight", "transformer.enc_output.bias", "class_embed.weight"):
        assert got[name] == (1e-4, 1e-4)


def test_groups_are_merged_named_and_complete() -> None:
    model = StandIn()
    groups = param_groups(model, out_feature_indexes=(3, 6, 9, 12), **KW)
    # embeddings (no decay) + 12 blocks x (decay, no decay) + final norm + decoder + others
    assert len(groups) == 1 + 24 + 1 + 1 + 1
    keys = [(g["lr"], g["weight_decay"]) for g in groups]
    assert len(set(keys)) == len(keys)
    names = [g["name"] for g in groups]
    assert len(set(names)) == len(names)
    assert {"encoder.embeddings/no_decay", "encoder.block3", "encoder.block3/no_decay", "encoder.head/no_decay",
            "decoder", "other"} <= set(names)
    in_groups = [p for g in groups for p in g["params"]]
    assert len(in_groups) == len({id(p) for p in in_groups}) == len(list(model.parameters()))


def test_zero_layer_decay_merges_encoder_and_frozen_params_are_dropped() -> None:
    model = StandIn()
    groups = param_groups(model, out_feature_indexes=(3, 6, 9, 12), **{**KW, "lr_vit_layer_decay": 0.0})
    by_name = {g["name"]: g for g in groups}
    # Every block and the embeddings share lr 0 -> two groups; only the final norm keeps an encoder LR (0**0 == 1).
    assert by_name["encoder.embeddings/no_decay+encoder.block0-11/no_decay"]["lr"] == 0.0
    assert by_name["encoder.block0-11"]["lr"] == 0.0
    assert by_name["encoder.head/no_decay"]["lr"] == pytest.approx(ENC)
    assert len(groups) == 5

    model.backbone[0].encoder.requires_grad_(False)
    groups = param_groups(model, out_feature_indexes=(3, 6, 9, 12), **KW)
    assert [g["name"] for g in groups] == ["other", "decoder"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable


def test_real_model_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rules on the real nano detector, if the model package is importable."""
    detector = pytest.importorskip("rfdetr.models.detector", reason="the model code is not in this checkout")
    from rfdetr.config import get_preset

    # Only names matter here: skipping the ViT's truncated-normal init (3/4 of the build time on 2 cores).
    monkeypatch.setattr(nn.init, "trunc_normal_", lambda tensor, *args, **kwargs: tensor)
    cfg = get_preset("nano").replace(num_queries=10, group_detr=2)
    model = detector.build_model(cfg)
    groups = param_groups(model, out_feature_indexes=cfg.out_feature_indexes, **KW)
    names = {g["name"]: g for g in groups}
    assert len(groups) == 1 + 2 * 12 + 1 + 1 + 1
    assert names["encoder.embeddings/no_decay"]["lr"] == pytest.approx(ENC * 0.8**14)
    assert names["encoder.block11"]["lr"] == pytest.approx(ENC * 0.8**2)
    assert names["encoder.head/no_decay"]["lr"] == pytest.approx(ENC)
    assert names["decoder"]["lr"] == pytest.approx(7e-5)
    assert names["other"]["lr"] == 1e-4
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_build_optimizer_and_scheduler() -> None:
    model = StandIn(depth=2)
    optimizer = build_optimizer(model, out_feature_indexes=(1, 2), **KW)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["fused"]  # fused on CPU too
    initial = [g["lr"] for g in optimizer.param_groups]
    scheduler = build_scheduler(optimizer, steps_per_epoch=10, epochs=4, warmup_epochs=1, schedule="cosine",
                                lr_drop=100, lr_min_factor=0.0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.0] * len(initial)  # warm-up starts at 0
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(initial)  # warm-up done
    with pytest.raises(ValueError, match="unknown LR schedule"):
        build_scheduler(optimizer, steps_per_epoch=10, epochs=4, warmup_epochs=0, schedule="poly", lr_drop=1)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(model, out_feature_indexes=(1, 2), **KW)


def test_lr_factor_step() -> None:
    kw = dict(steps_per_epoch=10, epochs=120, warmup_epochs=0.0, schedule="step", lr_drop=100)
    assert lr_factor(0, **kw) == 1.0
    assert lr_factor(999, **kw) == 1.0
    assert lr_factor(1000, **kw) == 0.1
    # Defaults (lr_drop = epochs = 100): constant LR for the whole run.
    assert {lr_factor(s, 10, 100, 0.0, "step", 100) for s in range(1000)} == {1.0}


def test_lr_factor_cosine_and_warmup() -> None:
    kw = dict(steps_per_epoch=10, epochs=10, schedule="cosine", lr_drop=100)
    assert lr_factor(0, warmup_epochs=0, **kw) == 1.0
    assert lr_factor(50, warmup_epochs=0, **kw) == pytest.approx(0.5)
    assert lr_factor(100, warmup_epochs=0, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(100, warmup_epochs=0, lr_min_factor=0.1, **kw) == pytest.approx(0.1)
    assert lr_factor(500, warmup_epochs=0, **kw) == pytest.approx(0.0, abs=1e-12)  # clamped past the end
    # Warm-up over 2 epochs = 20 steps: linear from 0, then the cosine starts at 1.
    assert [lr_factor(s, warmup_epochs=2, **kw) for s in (0, 5, 10, 20)] == [0.0, 0.25, 0.5, 1.0]
    assert lr_factor(60, warmup_epochs=2, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    # Fractional warm-up epochs.
    assert lr_factor(2, steps_per_epoch=10, epochs=10, warmup_epochs=0.5, schedule="step", lr_drop=100) == 0.4


def test_steps_per_epoch() -> None:
    assert steps_per_epoch(100, batch_size=4, grad_accum_steps=4) == 6
    assert steps_per_epoch(100, batch_size=4, grad_accum_steps=4, drop_last=False) == 7
    assert steps_per_epoch(100, batch_size=4, grad_accum_steps=1, world_size=2) == 12
    assert steps_per_epoch(3, batch_size=4, grad_accum_steps=4) == 1


def test_precision_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, amp=True) is None
    assert not build_grad_scaler(cpu, None).is_enabled()
