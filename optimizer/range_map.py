"""Rank-shard <-> parameter-slice range maps for the ZeRO-1 distributed optimizer.

Worked example (world 2, one bucket). The buffer holds, in buffer order,
    a: shape (40, 4) -> 160 elements at buffer [0, 160)
    b: shape (100,)  -> 100 elements at buffer [160, 260)
    c: shape (30, 2) ->  60 elements at buffer [260, 320)
The bucket is padded to a multiple of lcm(2, 128) = 128, so it has 384 elements; rank r owns the
contiguous 1/2 of it, buffer [192·r, 192·(r+1)), whatever the param boundaries:

    rank 0, shard buffer [0, 192):
        a  param [0, 160)    buffer [0, 160)    shard [0, 160)
        b  param [0, 32)     buffer [160, 192)  shard [160, 192)
    rank 1, shard buffer [192, 384):
        b  param [32, 100)   buffer [192, 260)  shard [0, 68)
        c  param [0, 60)     buffer [260, 320)  shard [68, 128)
        (shard [128, 192) is padding: no param, no optimizer state)

``param [s, e)`` are offsets in the flattened param, ``buffer`` are global buffer offsets (the
grad and param buffers share the layout), ``shard`` are offsets inside the rank's shard. A param
lies in one bucket, and a rank's part of a bucket is contiguous, so each rank holds at most one
slice of each param. b is cut by the shard boundary: rank 0 updates its first 32 elements and rank
1 the other 68; b is 1-D, so neither applies weight decay to it, while a and c get it.
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
    buffer_start: int
    buffer_end: int
    shard_start: int
    shard_end: int

    @property
    def numel(self) -> int:
        return self.param_end - self.param_start


def shard_param_slices(
    param_index_map: Mapping[Hashable, tuple[int, int, int]],
    shard_start: int,
    shard_end: int,
    bucket_id: int | None = None,
) -> list[ParamSlice]:
    """The slices of params that fall in buffer range [shard_start, shard_end), in buffer order.

    1. For each param with buffer range [s, e) (restricted to ``bucket_id`` when given), intersect
       with the shard: lo = max(s, shard_start), hi = min(e, shard_end).
    2. A non-empty intersection becomes a slice: param offsets lo-s .. hi-s, shard offsets
       lo-shard_start .. hi-shard_start.
    3. Sort by buffer offset so the slices tile the shard left to right (gaps are padding).
    """
    if shard_end < shard_start:
        raise ValueError(f"empty-or-negative shard range [{shard_start}, {shard_end})")
    slices = []
    for param, (start, end, bid) in param_index_map.items():
        if bucket_id is not None and bid != bucket_id:
            continue
        lo, hi = max(start, shard_start), min(end, shard_end)
        if lo >= hi:
            continue
        slices.append(ParamSlice(param, lo - start, hi - start, lo, hi, lo - shard_start, hi - shard_start))
    slices.sort(key=lambda s: s.buffer_start)
    for prev, nxt in zip(slices, slices[1:]):
        assert prev.buffer_end <= nxt.buffer_start, f"params overlap in the buffer: {prev} and {nxt}"
    return slices


def overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> tuple[int, int] | None:
    """The intersection of [a_start, a_end) and [b_start, b_end), or None when empty."""
    lo, hi = max(a_start, b_start), min(a_end, b_end)
    return (lo, hi) if lo < hi else None
