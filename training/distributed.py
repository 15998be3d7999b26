"""DDP under torchrun: process-group setup, model wrapping, sharing values, teardown.

Without torchrun's environment everything here is a no-op and the run is one process.
gloo on the CPU, nccl on CUDA. Rank 0 alone logs, validates, writes checkpoints and
decides what all ranks must agree on (the budget: srdeploy.training.budget); the others
receive its decisions through ``broadcast_from_main``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup() -> DistEnv:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    if not td.is_initialized():
        use_cuda = torch.cuda.is_available() and os.environ.get("SRDEPLOY_DDP_BACKEND") != "gloo"
        if use_cuda:
            torch.cuda.set_device(env.local_rank)
        td.init_process_group(backend="nccl" if use_cuda else "gloo")
    return env


def wrap(model: nn.Module, env: DistEnv) -> nn.Module:
    if not env.enabled:
        return model
    device_ids = [env.local_rank] if next(model.parameters()).is_cuda else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _comm_device() -> torch.device:
    # nccl moves CUDA tensors only; gloo takes CPU tensors.
    return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")


def broadcast_from_main(value: int, env: DistEnv) -> int:
    """Rank 0's ``value`` on every rank (what the others pass is ignored)."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    td.broadcast(t, src=0)
    return int(t.item())


def gather_rows(row: list[float], env: DistEnv) -> list[list[float]]:
    """Every rank's ``row`` (same length everywhere), in rank order, on every rank."""
    if not env.enabled:
        return [list(row)]
    mine = torch.tensor(row, dtype=torch.float64, device=_comm_device())
    rows = [torch.empty_like(mine) for _ in range(env.world_size)]
    td.all_gather(rows, mine)
    return [r.tolist() for r in rows]


def teardown(env: DistEnv) -> None:
    if env.enabled and td.is_initialized():
        td.destroy_process_group()


@contextmanager
def process_group() -> Iterator[DistEnv]:
    """``setup()`` on entry, ``teardown()`` on exit, also when the run raises (torchrun then
    stops the other ranks)."""
    env = setup()
    try:
        yield env
        if env.enabled:
            # Every rank reaches the end before any leaves: a rank that destroyed its
            # group and exited first could close gloo's sockets under a slower one,
            # whose gloo thread then aborted the process (seen under load). Not on an
            # error: the other ranks may never come.
            td.barrier()
    finally:
        teardown(env)
