"""The param-and-grad buffer's layout, re-derived from first principles (the unit and dist buffer tests)."""
import math

import torch

from parallel.param_and_grad_buffer import ParamAndGradBuffer


def check_layout(buf: ParamAndGradBuffer, registered: list, bucket_size: int, world: int, one_bucket: bool):
    """Independent re-derivation: reverse order, contiguous params, padding, coverage without gap or overlap."""
    pad = world * 128 // math.gcd(world, 128)
    assert buf.params == registered[::-1]
    # 1. params are contiguous in reverse order, restarting after each padded bucket end
    expect_start = 0
    for b in buf.buckets:
        assert b.offset == expect_start, "buckets must tile the buffer without gaps"
        assert b.numel % pad == 0 and b.numel > 0
        pos = b.offset
        for p in b.params:
            s, e, bid = buf.param_index_map[p]
            assert (s, e, bid) == (pos, pos + p.numel(), b.index)
            pos = e
        used = pos - b.offset
        assert b.numel - used < pad, "padding is less than one multiple"
        if not one_bucket and b.index < len(buf.buckets) - 1:
            assert used >= bucket_size, "a bucket closes only once it holds bucket_size elements"
            assert used - b.params[-1].numel() < bucket_size, "... and closes at the first param that fills it"
        expect_start = b.offset + b.numel
    assert expect_start == buf.numel == buf.param_data.numel() == buf.grad_data.numel()
    # 2. every param appears exactly once, in buffer order across buckets
    flat = [p for b in buf.buckets for p in b.params]
    assert flat == buf.params and len(set(map(id, flat))) == len(registered)
    # 3. no overlap: mark element ownership
    owner = torch.full((buf.numel,), -1)
    for i, p in enumerate(buf.params):
        s, e, _ = buf.param_index_map[p]
        assert bool((owner[s:e] == -1).all())
        owner[s:e] = i
    assert int((owner >= 0).sum()) == buf.numel_unpadded
    # 4. shards split every bucket evenly and cover it
    for b in buf.buckets:
        ranges = [b.shard_range(r) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == b.numel
        assert all(ranges[i][1] == ranges[i + 1][0] for i in range(world - 1))
        assert len({e - s for s, e in ranges}) == 1
