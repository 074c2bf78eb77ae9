"""ParamAndGradBuffer layout, checked against a layout recomputed from first principles (single process)."""
import pytest
import torch
from torch import nn

from parallel.param_and_grad_buffer import ParamAndGradBuffer, compute_layout
from tests.support.buffer_layout import check_layout


def _params(sizes, dtype=torch.float32):
    torch.manual_seed(0)
    return [nn.Parameter(torch.randn(*s, dtype=dtype)) for s in sizes]


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
