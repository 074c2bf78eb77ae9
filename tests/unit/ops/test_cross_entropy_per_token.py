"""linear_cross_entropy_per_token against plain logits + F.cross_entropy(reduction="none"), forward and backward."""
import pytest
import torch
import torch.nn.functional as F

from model.ops import linear_cross_entropy_per_token


@pytest.mark.parametrize("n,d,v,chunk", [(13, 8, 37, 5), (7, 16, 50, 64), (1, 4, 3, 1)])
def test_matches_reference_forward_and_backward(n, d, v, chunk):
    g = torch.Generator().manual_seed(n * 100 + v)
    h = torch.randn(n, d, generator=g, dtype=torch.float32, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=torch.float32, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    t[::3] = -100
    up = torch.randn(n, generator=g, dtype=torch.float32)  # per-token upstream grads, as DPO's weights
    out = linear_cross_entropy_per_token(h, w, t, chunk_size=chunk)
    (out * up).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy((h @ w.t()), t, ignore_index=-100, reduction="none")
    (ref * up).sum().backward()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, h.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-5)
    assert torch.all(out[t == -100] == 0)
