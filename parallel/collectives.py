"""The flat-tensor collectives of the data-parallel code, their futures, and the torch-version shim.

Every collective names its process group (nothing here falls back to the default group). Comm hooks and the
DDP's ZeRO-1 param gather call these instead of torch.distributed's names, which changed across versions.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

# torch >= 2.13 renamed the flat-tensor collectives; keep working on older versions (the GPU machine may differ)
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def reduce_scatter(output: torch.Tensor, input: torch.Tensor, group, async_op: bool = False):
    """Sum `input` over `group` and leave this rank's 1/world part of the sum in `output` (a Work if async_op)."""
    return _REDUCE_SCATTER(output, input, group=group, async_op=async_op)


def all_gather(output: torch.Tensor, input: torch.Tensor, group, async_op: bool = False):
    """Concatenate every rank's `input` (rank order) into `output` (a Work if async_op)."""
    return _ALL_GATHER(output, input, group=group, async_op=async_op)


def completed_future(t: torch.Tensor) -> torch.futures.Future:
    """A future already holding t (CUDA-aware on GPU: waiters sync with the current stream)."""
    fut = torch.futures.Future(devices=[t.device]) if t.is_cuda else torch.futures.Future()
    fut.set_result(t)
    return fut


def work_future(work) -> torch.futures.Future:
    """The future of an async collective; gloo lacks it for some collectives (reduce_scatter): wait, then wrap."""
    try:
        return work.get_future()
    except RuntimeError:
        work.wait()
        return completed_future(torch.empty(0))
