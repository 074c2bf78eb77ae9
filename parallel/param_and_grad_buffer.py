"""ParamAndGradBuffer: one contiguous param buffer and one contiguous grad buffer for a set of same-dtype params.

Layout (worked example, world 2, pad to lcm(2, 128) = 128, bucket_size 300, params registered a(100), b(50), c(400)):
  params go in reverse registration order (the order backward produces their grads): c, b, a.
  c -> [0, 400)          bucket 0 now holds 400 >= 300 elements: close it, pad its end 400 -> 512
  b -> [512, 562)
  a -> [562, 662)        end of params: close bucket 1, pad its end 662 -> 768
  buckets: 0 = [0, 512) with (c), 1 = [512, 768) with (b, a); shard_range(rank) of bucket 1 is
  (0, 128) for rank 0 and (128, 256) for rank 1, local to the bucket.
Padding elements are zero in both buffers and belong to no param. A param never straddles two buckets.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

PAD_MULTIPLE = 128  # bucket ends are padded to lcm(world, 128): even shards, and 128-element (>=256 B) alignment


def bucket_pad_multiple(world_size: int) -> int:
    return world_size * PAD_MULTIPLE // math.gcd(world_size, PAD_MULTIPLE)


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def shard_range(numel: int, world_size: int, rank: int) -> tuple[int, int]:
    """Elements [start, end) of a bucket of `numel` elements owned by `rank`: the rank's equal, contiguous part."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    size = numel // world_size
    return rank * size, (rank + 1) * size


def compute_layout(numels: list[int], bucket_size: int, world_size: int,
                   disable_bucketing: bool) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Place params (given in buffer order) into buckets.

    1. Walk the params in order; each starts where the previous one ended (no gaps inside a bucket).
    2. After placing a param, if the open bucket holds >= bucket_size elements (and bucketing is on), close it.
    3. Closing a bucket pads its end up to a multiple of lcm(world, 128); the next bucket starts there.
    4. The last open bucket is closed (and padded) after the last param.
    Returns ([(start, end, bucket_id)] per param, [(bucket_start, bucket_end)] per bucket).
    """
    multiple = bucket_pad_multiple(world_size)
    spans: list[tuple[int, int, int]] = []
    buckets: list[tuple[int, int]] = []
    bucket_start = offset = 0
    for i, n in enumerate(numels):
        spans.append((offset, offset + n, len(buckets)))
        offset += n
        last = i == len(numels) - 1
        if last or (not disable_bucketing and offset - bucket_start >= bucket_size):
            end = _round_up(max(offset, bucket_start + 1), multiple)
            buckets.append((bucket_start, end))
            bucket_start = offset = end
    return spans, buckets


class Bucket:
    """A contiguous, padded slice of the buffer that is reduced as one collective (layout only: the DDP builds
    the hook-facing view of it, with the process group and the grad scale; see parallel/comm_hooks/bucket.py)."""

    def __init__(self, index: int, params: list[nn.Parameter], offset: int, numel: int,
                 param_data: torch.Tensor, grad_data: torch.Tensor, world_size: int):
        assert numel % world_size == 0, f"bucket {index}: numel {numel} not divisible by world {world_size}"
        self.index = index
        self.params = params
        self.offset = offset
        self.numel = numel
        self.param_data = param_data
        self.grad_data = grad_data
        self.world_size = world_size

    def shard_range(self, rank: int) -> tuple[int, int]:
        """Elements [start, end) of this bucket owned by `rank` (local to the bucket; equal sizes)."""
        return shard_range(self.numel, self.world_size, rank)

    def __repr__(self) -> str:
        return f"Bucket(index={self.index}, offset={self.offset}, numel={self.numel}, params={len(self.params)})"


class ParamAndGradBuffer:
    """Flat param_data (param dtype) and grad_data (grad dtype) for `params`, cut into padded buckets.

    1. Order the params in reverse registration order and compute the layout (see compute_layout).
    2. Allocate zeroed param_data/grad_data; copy each param's values into its slice, then re-point
       param.data at that slice (so optimizer updates and all-gathers write the model's weights directly).
    3. Build the param -> (start, end, bucket_id) table and the Bucket views.
    """

    def __init__(self, params: Iterable[nn.Parameter], param_dtype: torch.dtype, grad_dtype: torch.dtype,
                 bucket_size: int, world_size: int, disable_bucketing: bool):
        params = list(params)
        if not params:
            raise ValueError("ParamAndGradBuffer needs at least one parameter")
        if bucket_size <= 0:
            raise ValueError(f"bucket_size must be positive, got {bucket_size}; set --bucket_size")
        if world_size <= 0:
            raise ValueError(f"world_size must be positive, got {world_size}")
        device = params[0].device
        for p in params:
            if p.dtype != param_dtype:
                raise TypeError(f"param of shape {tuple(p.shape)} has dtype {p.dtype}, buffer holds {param_dtype}")
            if p.device != device:
                raise ValueError(f"params live on {device} and {p.device}; move the model to one device first")
        self.param_dtype, self.grad_dtype, self.world_size = param_dtype, grad_dtype, world_size
        self.params = params[::-1]
        spans, bucket_ranges = compute_layout([p.numel() for p in self.params], bucket_size, world_size,
                                              disable_bucketing)
        self.numel = bucket_ranges[-1][1]
        self.numel_unpadded = sum(p.numel() for p in self.params)
        self.param_data = torch.zeros(self.numel, dtype=param_dtype, device=device)
        self.grad_data = torch.zeros(self.numel, dtype=grad_dtype, device=device)
        self.param_index_map: dict[nn.Parameter, tuple[int, int, int]] = {}
        bucket_params: list[list[nn.Parameter]] = [[] for _ in bucket_ranges]
        with torch.no_grad():
            for p, (start, end, b) in zip(self.params, spans):
                view = self.param_data[start:end].view(p.shape)
                view.copy_(p.data)
                p.data = view
                self.param_index_map[p] = (start, end, b)
                bucket_params[b].append(p)
        self.buckets = [
            Bucket(i, bucket_params[i], s, e - s, self.param_data[s:e], self.grad_data[s:e], world_size)
            for i, (s, e) in enumerate(bucket_ranges)
        ]

    def main_grad(self, param: nn.Parameter) -> torch.Tensor:
        """The param's slice of grad_data, shaped like the param (a view: writes go into the buffer)."""
        start, end, _ = self.param_index_map[param]
        return self.grad_data[start:end].view(param.shape)

    def __repr__(self) -> str:
        return (f"ParamAndGradBuffer({self.param_dtype}->{self.grad_dtype}, numel={self.numel}, "
                f"unpadded={self.numel_unpadded}, buckets={len(self.buckets)})")
