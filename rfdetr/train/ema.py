"""Exponential moving average of the model weights (spec ``rfdetr_training.md`` 2.5).

After every optimizer step ``ema <- d_t * ema + (1 - d_t) * model`` over the whole ``state_dict`` (parameters and
float buffers), with the warm-up ``d_t = decay * (1 - exp(-t / tau))`` and ``t = 1, 2, ...``. Unlike RF-DETR 1.4.1 the
update counter is part of :meth:`ModelEMA.state_dict`, so a resumed run continues the exact decay sequence.

Frozen parameters (``requires_grad=False``, e.g. the detector in stage 2) do not change, so their average is their
value: they are copied once when first seen frozen and skipped afterwards, instead of being re-averaged every step
(the same numbers, without a pass over most of the weights of a stage-2 model per step).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from rfdetr.util.distributed import unwrap_model

logger = logging.getLogger(__name__)


def ema_decay(step: int, decay: float, tau: float) -> float:
    """The decay used by update number ``step`` (1-based); ``tau == 0`` disables the warm-up."""
    if tau <= 0:
        return decay
    return decay * (1.0 - math.exp(-step / tau))


class ModelEMA:
    """A frozen, eval-mode copy of a model that tracks the moving average of its weights.

    Args:
        model: the model being trained; DDP and ``torch.compile`` wrappers are unwrapped before copying.
        decay: decay after warm-up (0.993 in RF-DETR).
        tau: warm-up constant in optimizer steps (100 in RF-DETR).

    Attributes:
        module: the averaged model (evaluate it, save ``module.state_dict()`` as EMA weights).
        updates: number of updates so far (``t`` of the last update).
    """

    def __init__(self, model: nn.Module, decay: float = 0.993, tau: float = 100.0) -> None:
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0
        # Names of frozen parameters already equal to the model's (skipped until they become trainable again).
        self._synced_frozen: set[str] = set()

    @property
    def current_decay(self) -> float:
        """The decay the last update used (0 before any update)."""
        return ema_decay(self.updates, self.decay, self.tau) if self.updates else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (same architecture, same device) into the average."""
        self.updates += 1
        d = ema_decay(self.updates, self.decay, self.tau)
        source_model = unwrap_model(model)
        source = source_model.state_dict(keep_vars=True)
        frozen = {name for name, p in source_model.named_parameters(remove_duplicate=False) if not p.requires_grad}
        self._synced_frozen &= frozen  # an unfrozen parameter is averaged again from now on
        averaged, current = [], []
        seen: set[int] = set()
        for name, ema_value in self.module.state_dict(keep_vars=True).items():
            if id(ema_value) in seen:
                continue  # a tied tensor is listed under every name it has: average it only once
            seen.add(id(ema_value))
            if name in self._synced_frozen:
                continue
            value = source[name].detach()
            if name in frozen:
                ema_value.copy_(value)  # its average from now on, while it stays frozen
                self._synced_frozen.add(name)
            elif ema_value.is_floating_point():
                averaged.append(ema_value)
                current.append(value.to(ema_value.dtype))
            else:
                ema_value.copy_(value)  # integer buffers (counters, indexes) cannot be averaged: follow the model
        if averaged:
            # lerp(ema, x, 1 - d) = d * ema + (1 - d) * x, in one fused kernel per device and dtype.
            torch._foreach_lerp_(averaged, current, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        """``{"module": weights, "updates": t}``: everything needed to continue the average exactly."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; a bare model ``state_dict`` (e.g. upstream's ``ema_model``) also works, but
        then the counter restarts at 0, repeating the warm-up as RF-DETR 1.4.1 does."""
        self._synced_frozen.clear()  # the loaded weights may differ from the model's frozen ones: copy them again
        if "module" in state and "updates" in state:
            self.module.load_state_dict(state["module"])
            self.updates = int(state["updates"])
        else:
            self.module.load_state_dict(state)
            self.updates = 0
            logger.info("EMA weights loaded without an update counter: the decay warm-up restarts")
