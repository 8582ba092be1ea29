"""ModelEMA: the decay warm-up numbers of spec 2.5, the update rule, buffers, unwrapping and exact resume."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from rfdetr.train.ema import ModelEMA, ema_decay


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def perturb(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.add_(torch.randn(p.shape, generator=generator))
            self.running.add_(1.0)
            self.count.add_(1)


def test_decay_schedule_numbers() -> None:
    """Spec 2.5: d_1 ~ 0.0099, d_100 ~ 0.628, d_300 ~ 0.943, d_500 ~ 0.986, -> 0.993; tau 0 disables warm-up."""
    assert ema_decay(1, 0.993, 100) == pytest.approx(0.00988, abs=1e-4)
    assert ema_decay(100, 0.993, 100) == pytest.approx(0.628, abs=1e-3)
    assert ema_decay(300, 0.993, 100) == pytest.approx(0.943, abs=1e-3)
    assert ema_decay(500, 0.993, 100) == pytest.approx(0.986, abs=1e-3)
    assert ema_decay(10**6, 0.993, 100) == pytest.approx(0.993)
    assert ema_decay(1, 0.993, 0) == 0.993


def test_copy_is_frozen_eval_and_independent() -> None:
    model = Tiny().train()
    ema = ModelEMA(model)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert ema.updates == 0 and ema.current_decay == 0.0
    model.perturb(0)
    assert not torch.equal(ema.module.linear.weight, model.linear.weight)  # a copy, not a view


def test_update_rule_covers_params_and_buffers() -> None:
    model = Tiny()
    ema = ModelEMA(model, decay=0.9, tau=10)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    model.perturb(1)
    ema.update(model)
    d = 0.9 * (1 - torch.exp(torch.tensor(-0.1))).item()
    assert ema.current_decay == pytest.approx(d)
    now = model.state_dict()
    for name in ("linear.weight", "linear.bias", "running"):
        expected = d * before[name] + (1 - d) * now[name]
        torch.testing.assert_close(ema.module.state_dict()[name], expected)
    assert ema.module.count.item() == 1  # integer buffers follow the model


def test_tied_weights_are_averaged_once() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    model[1].weight = model[0].weight  # listed twice in state_dict
    ema = ModelEMA(model, decay=0.5, tau=0)
    start = ema.module[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    assert ema.module[1].weight is ema.module[0].weight  # deepcopy keeps the tie
    torch.testing.assert_close(ema.module[0].weight, 0.5 * start + 0.5 * model[0].weight.detach())


def test_unwraps_data_parallel_and_compile() -> None:
    model = Tiny()
    for wrapped in (nn.DataParallel(model), torch.compile(model)):
        ema = ModelEMA(wrapped)
        assert isinstance(ema.module, Tiny)
        model.perturb(2)
        ema.update(wrapped)  # keys without "module." / "_orig_mod." prefixes
        assert ema.updates == 1


def test_state_round_trip_resumes_exactly() -> None:
    model = Tiny()
    ema = ModelEMA(model)
    for step in range(5):
        model.perturb(step)
        ema.update(model)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = ModelEMA(Tiny())
    resumed.load_state_dict(state)
    assert resumed.updates == 5
    for step in range(5, 8):  # continue both: identical weights and decay sequence
        model.perturb(step)
        ema.update(model)
        resumed.update(model)
    assert resumed.updates == ema.updates == 8
    for key, value in ema.module.state_dict().items():
        torch.testing.assert_close(resumed.module.state_dict()[key], value, rtol=0, atol=0)

    legacy = ModelEMA(Tiny())
    legacy.load_state_dict(ema.module.state_dict())  # upstream's bare `ema_model` weights
    assert legacy.updates == 0
    torch.testing.assert_close(legacy.module.linear.weight, ema.module.linear.weight)


def test_frozen_parameters_follow_the_model_without_averaging() -> None:
    """A frozen parameter's average is its value: copied once, then skipped; averaged again once unfrozen."""
    model = Tiny()
    model.linear.weight.requires_grad_(False)
    ema = ModelEMA(model, decay=0.9, tau=0)
    with torch.no_grad():
        model.linear.weight.add_(1.0)  # changed while frozen (e.g. weights loaded after the EMA was made)
    before_bias = ema.module.linear.bias.detach().clone()
    model.perturb(3)  # also moves the frozen weight: the EMA copies it rather than averaging it
    ema.update(model)
    torch.testing.assert_close(ema.module.linear.weight, model.linear.weight, rtol=0, atol=0)
    torch.testing.assert_close(ema.module.linear.bias, 0.9 * before_bias + 0.1 * model.linear.bias.detach())
    assert ema._synced_frozen == {"linear.weight"}

    ema.module.linear.weight.data.fill_(7.0)  # a synced frozen parameter is not touched any more
    ema.update(model)
    assert bool((ema.module.linear.weight == 7.0).all())

    model.linear.weight.requires_grad_(True)  # unfrozen: averaged from its EMA value on
    ema.update(model)
    torch.testing.assert_close(ema.module.linear.weight, 0.9 * 7.0 + 0.1 * model.linear.weight.detach())


def test_frozen_parameters_give_the_same_average_as_full_averaging() -> None:
    """Stage 2's case: frozen weights never change, so skipping them leaves every EMA tensor bit-identical."""
    full, skip = Tiny(), Tiny()
    skip.load_state_dict(full.state_dict())
    skip.linear.weight.requires_grad_(False)
    ema_full, ema_skip = ModelEMA(full, decay=0.9, tau=5), ModelEMA(skip, decay=0.9, tau=5)
    for step in range(4):
        with torch.no_grad():
            for model in (full, skip):
                model.linear.bias.add_(float(step))
                model.running.add_(1.0)
        ema_full.update(full)
        ema_skip.update(skip)
    for key, value in ema_full.module.state_dict().items():
        torch.testing.assert_close(ema_skip.module.state_dict()[key], value, rtol=0, atol=0)
