"""torchrun support: one process per device, gloo on CPU, NCCL on CUDA. A plain `python train.py` is one process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from utils import InputError


def choose_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The one place a device is chosen: `auto` is CUDA when available, else CPU.

    A torchrun process (`local_rank` given) on CUDA takes the GPU of its local rank, one GPU per process.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"-device {name}: CUDA is not available on this machine (use -device cpu)")
    if device.type == "cuda" and local_rank is not None:
        device = torch.device(device.type, local_rank)
    return device


def setup_distributed(device_name: str) -> tuple[torch.device, int]:
    """Join the process group torchrun describes (WORLD_SIZE > 1) and pick this rank's device (`-device`)
    -> (device, rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return choose_device(device_name), 0
    device = choose_device(device_name, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank()


def world_size() -> int:
    """Processes in the torchrun job (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes logs and checkpoints."""
    return world_size() == 1 or dist.get_rank() == 0


@contextlib.contextmanager
def distributed_session(device_name: str) -> Iterator[tuple[torch.device, int]]:
    """`with distributed_session(-device) as (device, rank):` joins torchrun's process group (if any) and leaves it
    at the end: after a barrier when the body finished, at once when it raised — a rank that fails must not wait
    in a collective the others never reach (torchrun then stops them), it exits with its error."""
    device, rank = setup_distributed(device_name)
    try:
        yield device, rank
    except BaseException:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_state(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (as DDP does when it wraps a model)."""
    if world_size() > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over all ranks (itself in a single process)."""
    if world_size() == 1:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def gather_objects(items: list) -> list:
    """Every rank's list items, concatenated in rank order on every rank (the list itself in a single process)."""
    if world_size() == 1:
        return items
    gathered: list[list | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def check_in_sync(module: torch.nn.Module) -> None:
    """Fail loudly if the ranks' copies of the weights have drifted apart (they must stay identical)."""
    if world_size() == 1:
        return
    checksum = torch.stack([t.detach().double().sum() for t in module.state_dict().values()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"the ranks' weights differ (checksums {[float(g) for g in gathered]})")
