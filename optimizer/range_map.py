"""Rank-shard <-> parameter-slice range maps for the ZeRO-1 distributed optimizer.

Worked example (world 2). A bucket holds, in bucket order,
    a: shape (40, 4) -> 160 elements at bucket [0, 160)
    b: shape (100,)  -> 100 elements at bucket [160, 260)
    c: shape (30, 2) ->  60 elements at bucket [260, 320)
The bucket is padded to a multiple of lcm(2, 128) = 128, so it has 384 elements; rank r owns the
contiguous 1/2 of it, bucket [192·r, 192·(r+1)), whatever the param boundaries:

    rank 0, shard bucket [0, 192):
        a  param [0, 160)    bucket [0, 160)    shard [0, 160)
        b  param [0, 32)     bucket [160, 192)  shard [160, 192)
    rank 1, shard bucket [192, 384):
        b  param [32, 100)   bucket [192, 260)  shard [0, 68)
        c  param [0, 60)     bucket [260, 320)  shard [68, 128)
        (shard [128, 192) is padding: no param, no optimizer state)

``param [s, e)`` are offsets in the flattened param, ``bucket`` are offsets in the bucket's flat tensors
(the grad and param data share the layout), ``shard`` are offsets inside the rank's shard. A param lies
in one bucket, and a rank's part of a bucket is contiguous, so each rank holds at most one slice of each
param. b is cut by the shard boundary: rank 0 updates its first 32 elements and rank 1 the other 68; b is
1-D, so neither applies weight decay to it, while a and c get it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Mapping


@dataclass(frozen=True)
class ParamSlice:
    """One param's part of one rank-shard (see the module docstring for the three offset systems)."""

    param: Any
    param_start: int
    param_end: int
    bucket_start: int
    bucket_end: int
    shard_start: int
    shard_end: int

    @property
    def numel(self) -> int:
        return self.param_end - self.param_start


def overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> tuple[int, int] | None:
    """The intersection of [a_start, a_end) and [b_start, b_end), or None when empty."""
    lo, hi = max(a_start, b_start), min(a_end, b_end)
    return (lo, hi) if lo < hi else None


def shard_param_slices(
    param_ranges: Mapping[Hashable, tuple[int, int]],
    shard_start: int,
    shard_end: int,
) -> list[ParamSlice]:
    """The slices of params that fall in bucket range [shard_start, shard_end), in bucket order.

    1. Intersect each param's bucket range [s, e) with the shard: [lo, hi).
    2. A non-empty intersection becomes a slice: param offsets lo-s .. hi-s, shard offsets
       lo-shard_start .. hi-shard_start.
    3. Sort by bucket offset so the slices tile the shard left to right (gaps are padding).
    """
    if shard_end < shard_start:
        raise ValueError(f"empty-or-negative shard range [{shard_start}, {shard_end})")
    slices = []
    for param, (start, end) in param_ranges.items():
        both = overlap(start, end, shard_start, shard_end)
        if both is None:
            continue
        lo, hi = both
        slices.append(ParamSlice(param, lo - start, hi - start, lo, hi, lo - shard_start, hi - shard_start))
    slices.sort(key=lambda s: s.bucket_start)
    for prev, nxt in zip(slices, slices[1:]):
        assert prev.bucket_end <= nxt.bucket_start, f"params overlap in the bucket: {prev} and {nxt}"
    return slices
