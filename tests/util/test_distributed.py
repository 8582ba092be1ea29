"""Distributed helpers: no-ops in one process, and a real 2-process Gloo group on CPU."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from rfdetr.util import distributed as du

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int) -> None:
    """One process of the group: the same env vars torchrun sets, then every collective helper."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = du.init_distributed(device="cpu")
    try:
        assert (info.rank, info.local_rank, info.world_size, info.device) == (rank, rank, 2, torch.device("cpu"))
        assert info.is_main == (rank == 0) and info.distributed
        assert du.is_distributed() and du.get_world_size() == 2 and du.is_main_process() == (rank == 0)
        # Keys inserted in a different order on each rank: the reduction must still pair them by name.
        values = {"loss": torch.tensor(1.0 + rank), "count": 2.0 * rank}
        if rank == 1:
            values = dict(reversed(list(values.items())))
        mean = du.reduce_dict(values)
        assert mean["loss"].item() == pytest.approx(1.5) and mean["count"].item() == pytest.approx(1.0)
        total = du.reduce_dict(values, average=False)
        assert total["loss"].item() == pytest.approx(3.0) and total["count"].item() == pytest.approx(2.0)
        x = torch.full((3,), float(rank))
        assert du.all_reduce_mean(x).tolist() == [0.5, 0.5, 0.5]
        assert x.tolist() == [float(rank)] * 3  # input untouched
        assert du.broadcast_object(f"runs/detector_{rank}") == "runs/detector_0"
        du.barrier()
    finally:
        du.cleanup()
    assert not du.is_distributed()


def test_two_process_gloo() -> None:
    saved = {k: os.environ.get(k) for k in _ENV}
    try:
        # fork, not spawn: the children inherit the imported torch (spawn re-imports it: ~10 s on 2 cores);
        # torch.multiprocessing still propagates a child's exception (failed assert) to this test.
        mp.start_processes(_worker, args=(2, _free_port()), nprocs=2, join=True, start_method="fork")
    finally:  # spawn children inherit nothing back, but be safe about our own environment
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_single_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in _ENV:
        monkeypatch.delenv(key, raising=False)
    info = du.init_distributed(device="cpu")
    assert info == du.DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    assert info.is_main and not info.distributed
    assert du.is_main_process() and du.get_rank() == 0 and du.get_world_size() == 1
    out = du.reduce_dict({"loss": torch.tensor(2.0), "n": 3})
    assert out["loss"].item() == 2.0 and out["n"].item() == 3
    x = torch.ones(2)
    assert du.all_reduce_mean(x) is not x and du.all_reduce_mean(x).tolist() == [1.0, 1.0]
    assert du.broadcast_object({"a": 1}) == {"a": 1}
    du.barrier()
    du.cleanup()


def test_cuda_request_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        du.init_distributed(device="cuda")


def test_unwrap_model() -> None:
    model = nn.Linear(2, 2)
    assert du.unwrap_model(model) is model
    assert du.unwrap_model(nn.DataParallel(model)) is model
