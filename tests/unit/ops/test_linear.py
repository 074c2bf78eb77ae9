"""ops.linear and swiglu_down with a weight-grad sink (gradient-accumulation fusion) against F.linear's grads."""
import pytest
import torch
import torch.nn.functional as F

from model.ops import linear, swiglu_down, swiglu_ref


class Sink:
    """Accumulates the weight grads it manages into its own fp32 buffers (what the DDP does into main_grad)."""

    def __init__(self, *weights, accept=True):
        self.acc = {w: torch.zeros(w.shape, dtype=torch.float64) for w in weights}
        self.accept, self.calls = accept, 0

    def accumulate_wgrad(self, weight, grad_out, inp):
        self.calls += 1
        assert grad_out.dim() == 2 and inp.dim() == 2 and grad_out.shape[0] == inp.shape[0]
        if not self.accept or weight not in self.acc:
            return False
        self.acc[weight] += grad_out.double().t() @ inp.double()
        return True


def _inputs(bias: bool, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 7, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.nn.Parameter(torch.randn(3, 7, generator=g, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64)) if bias else None
    return x, w, b


@pytest.mark.parametrize("bias", [False, True])
def test_declining_sink_gives_f_linear_grads_bitwise(bias):
    x, w, b = _inputs(bias)
    dy = torch.randn(2, 5, 3, dtype=torch.float64)
    ref = torch.autograd.grad(F.linear(x, w, b), [t for t in (x, w, b) if t is not None], dy)
    sink = Sink(w, accept=False)
    out = linear(x, w, b, sink)
    got = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None], dy)
    assert sink.calls == 1 and torch.equal(out, F.linear(x, w, b))
    for a, r in zip(got, ref):
        assert torch.equal(a, r)


@pytest.mark.parametrize("bias", [False, True])
def test_accepting_sink_takes_the_weight_grad_across_micro_batches(bias):
    x, w, b = _inputs(bias)
    sink = Sink(w)
    ref_w, ref_b = torch.zeros_like(w), torch.zeros(3, dtype=torch.float64)
    for _ in range(3):  # accumulation, as over micro-batches
        dy = torch.randn(2, 5, 3, dtype=torch.float64)
        linear(x, w, b, sink).backward(dy)
        ref_w += torch.einsum("bto,bti->oi", dy, x.detach())
        ref_b += dy.sum((0, 1))
        assert w.grad is None, "the sink took the weight grad: autograd must not write one"
        torch.testing.assert_close(sink.acc[w], ref_w, rtol=1e-12, atol=1e-12)
        if bias:
            torch.testing.assert_close(b.grad, ref_b, rtol=1e-12, atol=1e-12)
    assert sink.calls == 3


def test_no_sink_or_no_grad_is_plain_f_linear():
    x, w, _ = _inputs(False)
    sink = Sink(w)
    assert torch.equal(linear(x, w), F.linear(x, w))
    with torch.no_grad():
        linear(x, w, None, sink)
    frozen = w.detach()
    linear(x, frozen, None, sink).sum().backward()
    assert sink.calls == 0 and x.grad is not None


@pytest.mark.parametrize("recompute", [False, True])
def test_swiglu_down_offers_the_down_weight_grad(recompute):
    g = torch.Generator().manual_seed(3)
    gate_up = torch.randn(4, 6, 2 * 9, generator=g).requires_grad_()
    w = torch.nn.Parameter(torch.randn(5, 9, generator=g))
    dy = torch.randn(4, 6, 5, generator=g)
    ref = torch.autograd.grad(F.linear(swiglu_ref(gate_up), w), (gate_up, w), dy)
    sink = Sink(w)
    swiglu_down(gate_up, w, impl="torch", recompute=recompute, sink=sink).backward(dy)
    assert sink.calls == 1 and w.grad is None
    torch.testing.assert_close(gate_up.grad, ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sink.acc[w].float(), ref[1], rtol=1e-5, atol=1e-5)
