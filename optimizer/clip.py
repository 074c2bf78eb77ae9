"""Global gradient-norm clipping without host syncs.

The norm is over all params on all ranks. Who holds what decides the reduction:
- replicated grads (plain data parallel, after the all-reduce): every rank holds every grad, so the
  local norm already is the global one; summing across ranks would count each grad ``world`` times;
- sharded grads (ZeRO-1, after the reduce-scatter): each rank holds a disjoint slice, so the squared
  local norms are summed with one all-reduce; padding is never part of any slice.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

_EPS = 1e-6  # keeps the coefficient finite when the norm is 0


def tensor_norms(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The L2 norm of each tensor, as one fp32 vector on ``device`` (empty if there are none)."""
    if not tensors:
        return torch.zeros((0,), dtype=torch.float32, device=device)
    if all(t.dtype == torch.float32 for t in tensors):
        norms = torch._foreach_norm(tensors, 2.0)
    else:  # bf16/fp16 main grads: accumulate and return in fp32 (a bf16 norm would lose 3 digits)
        norms = torch._foreach_norm(tensors, 2.0, dtype=torch.float32)
    return torch.stack([n.float() for n in norms])


def squared_norm(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Sum of squares of all elements of ``tensors`` as an fp32 scalar on ``device`` (0 if empty).

    Equal, bit for bit, to ``torch.cat([tensor_norms(part) for part in parts]).square().sum()`` for any split of
    ``tensors`` into consecutive parts: the optimizer sums per-bucket norms taken during the backward that way.
    """
    if not tensors:
        return torch.zeros((), dtype=torch.float32, device=device)
    return tensor_norms(tensors, device).square().sum()


def norm_from_squared(sq: torch.Tensor, sharded: bool, group=None, world_size: int = 1) -> torch.Tensor:
    """The global L2 norm from this rank's squared norm (summed over ranks when sharded; ``sq`` is reduced in place)."""
    if sharded and world_size > 1:
        dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=group)
    return sq.sqrt()


def clip_coefficient(total_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """min(1, max_norm / (norm + eps)) as a tensor, so the caller never syncs to decide."""
    return (max_norm / (total_norm + _EPS)).clamp(max=1.0)

