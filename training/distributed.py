"""DDP under torchrun: process-group setup, model wrapping, teardown.

Without torchrun's environment everything here is a no-op and the run is one process.
gloo on the CPU, nccl on CUDA. Rank 0 alone logs, validates and writes checkpoints.
"""

from __future__ import annotations

import os
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


def barrier(env: DistEnv) -> None:
    if env.enabled:
        td.barrier()


def teardown(env: DistEnv) -> None:
    if env.enabled and td.is_initialized():
        td.destroy_process_group()
