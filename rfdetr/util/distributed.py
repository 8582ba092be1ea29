"""Process-group helpers for ``torchrun`` launches; every function is a no-op in a plain single-process run.

:func:`init_distributed` reads the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, plus
``MASTER_ADDR`` / ``MASTER_PORT`` read by ``init_process_group``) and returns a :class:`DistInfo`. It changes nothing
global besides ``init_process_group`` and ``torch.cuda.set_device``: no ``print`` override, no environment edits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its global and node-local rank, the number of processes and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init_distributed(device: str | None = None, backend: str | None = None) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``) and pick this process's device.

    Args:
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"`` ...; ``None`` means CUDA when available, else CPU. Under torchrun
            a CUDA device is always ``cuda:<LOCAL_RANK>``.
        backend: process-group backend; ``None`` means NCCL on CUDA and Gloo on CPU.

    Returns:
        This process's :class:`DistInfo` (rank 0 of 1 on the CPU or the default GPU when not launched by torchrun).

    Raises:
        RuntimeError: when CUDA is requested but not available.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    target = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} was requested but CUDA is not available; use --device cpu")
        if world_size > 1 or target.index is None:
            target = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        # Collectives and new CUDA tensors without an explicit index must land on this process's own GPU.
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if target.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
        logger.info("joined process group: rank %d/%d (local %d), backend %s, %s", rank, world_size, local_rank,
                    backend, target)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=target)


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, or the only process."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; Gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (a new tensor; the input is not modified)."""
    if not is_distributed():
        return tensor.detach().clone()
    out = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return (out / dist.get_world_size()).to(tensor.device)


@torch.no_grad()
def reduce_dict(values: Mapping[str, torch.Tensor | float], average: bool = True) -> dict[str, torch.Tensor]:
    """Sum (or average) scalar metrics over all processes, e.g. the loss dict for logging.

    Args:
        values: scalar tensors or numbers; every process must pass the same keys.
        average: divide the sums by the world size.

    Returns:
        The reduced scalars as detached tensors, same keys (unchanged values when not distributed).
    """
    if not is_distributed():
        return {k: torch.as_tensor(v, device=v.device if torch.is_tensor(v) else "cpu").detach()
                for k, v in values.items()}
    device = _collective_device()
    keys = sorted(values)  # the same order on every rank, whatever order each built its dict in
    stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=device).reshape(()) for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    if average:
        stacked /= dist.get_world_size()
    return {k: v for k, v in zip(keys, stacked, strict=True)}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every process (picklable objects, e.g. the run folder path)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` / ``DataParallel`` and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model
