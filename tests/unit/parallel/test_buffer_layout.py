"""ParamAndGradBuffer layout, checked against a layout recomputed from first principles (single process)."""
import math

import pytest
import torch
from torch import nn

from parallel.param_and_grad_buffer import ParamAndGradBuffer, compute_layout


def _params(sizes, dtype=torch.float32):
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(*s, dtype=dtype)) for s in sizes]


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


@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("bucket_size,one", [(1, False), (300, False), (5000, False), (300, True)])
def test_layout(world, bucket_size, one):
    sizes = [(100,), (50,), (20, 20), (1,), (7, 3), (513,), (2,)]
    params = _params(sizes)
    values = [p.detach().clone() for p in params]
    buf = ParamAndGradBuffer(params, torch.float32, torch.float32, bucket_size, world, one)
    check_layout(buf, params, bucket_size, world, one)
    if one:
        assert len(buf.buckets) == 1
    for p, v in zip(params, values):
        assert torch.equal(p.data, v), "values survive the move into the buffer"
        s, e, _ = buf.param_index_map[p]
        assert p.data.data_ptr() == buf.param_data[s:e].data_ptr(), "param.data is a view into param_data"
        assert buf.main_grad(p).shape == p.shape
    pad_mask = torch.ones(buf.numel, dtype=torch.bool)
    for s, e, _ in buf.param_index_map.values():
        pad_mask[s:e] = False
    assert bool((buf.param_data[pad_mask] == 0).all()) and bool((buf.grad_data == 0).all())


def test_docstring_example():
    spans, buckets = compute_layout([400, 50, 100], 300, 2, False)
    assert spans == [(0, 400, 0), (512, 562, 1), (562, 662, 1)]
    assert buckets == [(0, 512), (512, 768)]


def test_grad_dtype_and_param_writes_alias():
    params = _params([(4, 4), (3,)], dtype=torch.bfloat16)
    buf = ParamAndGradBuffer(params, torch.bfloat16, torch.float32, 10, 2, False)
    assert buf.param_data.dtype == torch.bfloat16 and buf.grad_data.dtype == torch.float32
    with torch.no_grad():
        params[0].add_(1.0)
    s, e, _ = buf.param_index_map[params[0]]
    assert torch.equal(buf.param_data[s:e].view(4, 4), params[0].data)


def test_errors():
    with pytest.raises(TypeError, match="dtype"):
        ParamAndGradBuffer(_params([(3,)]), torch.bfloat16, torch.float32, 10, 1, False)
    with pytest.raises(ValueError, match="bucket_size"):
        ParamAndGradBuffer(_params([(3,)]), torch.float32, torch.float32, 0, 1, False)
    with pytest.raises(ValueError, match="at least one"):
        ParamAndGradBuffer([], torch.float32, torch.float32, 10, 1, False)
