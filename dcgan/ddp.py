"""Multi-process training under ``torchrun``: process group set-up, rank, device, agreement."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pipeline.devices import resolve_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0  # this process's index
    world_size: int = 1  # number of processes
    local_rank: int = 0  # index on this machine (picks the GPU)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def local_device(pref: str, local_rank: int = 0) -> torch.device:
    """This process's device: ``resolve_device``'s choice, CUDA on the local rank's GPU."""
    if resolve_device(pref) == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def from_env() -> Dist:
    """This process's place in the group torchrun describes (env vars); alone: world size 1."""
    return Dist(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")))


def init(device_pref: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes; a plain run is world size 1."""
    dist = from_env()
    device = local_device(device_pref, dist.local_rank)
    if dist.enabled and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def any_true(flag: bool, dist: Dist, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (a collective: call it in step)."""
    if not dist.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch.distributed.barrier()


def shutdown(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
