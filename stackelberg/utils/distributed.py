"""Data parallelism under ``torchrun``: every rank takes its shard of each global batch and the
ranks average their gradients, so all of them take the same step.

Single-process runs need no change: without ``torchrun`` (no ``WORLD_SIZE`` in the environment)
every function here is a no-op. Under ``torchrun --nproc_per_node=N``, ``setup`` joins the
process group (NCCL on GPUs, gloo on CPU). For the mean of equally sized shards' mean losses,
the average of the shards' gradients *is* the full batch's gradient, so a solver whose step is
built from averaged gradients takes exactly the single-process step on the global batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_mean", "is_main_process", "rank", "setup", "shard", "world_size"]


def setup(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE > 1``); returns whether
    this is a distributed run. NCCL when CUDA is available, else gloo; each rank uses the GPU
    ``LOCAL_RANK``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    return True


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes files and prints."""
    return rank() == 0


def all_reduce_mean(tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """The mean of ``tensors`` over all ranks (the tensors themselves when single-process)."""
    size = world_size()
    if size == 1:
        return tuple(tensors)
    out = []
    for tensor in tensors:
        reduced = tensor.detach().clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        out.append(reduced / size)
    return tuple(out)


def shard(index: Tensor, *, drop_remainder: bool = False) -> Tensor:
    """This rank's contiguous share of a global batch's indices. The batch must split evenly,
    so that the shards' mean losses average to the global mean; with ``drop_remainder`` the
    last ``len(index) mod world_size`` indices are left out instead (a ragged last batch)."""
    size = world_size()
    if size == 1:
        return index
    if drop_remainder:
        index = index[: len(index) - len(index) % size]
    if len(index) % size:
        raise ValueError(
            f"a global batch of {len(index)} does not split evenly over {size} ranks: choose a "
            "batch size divisible by the number of processes"
        )
    per_rank = len(index) // size
    return index[rank() * per_rank : (rank() + 1) * per_rank]
