"""Fused linear cross-entropy against the unfused reference: loss and the hidden, weight and bias gradients."""
import pytest
import torch

import model.ops.cross_entropy as ce_mod
from model.ops import fused_linear_cross_entropy, linear_cross_entropy_ref
from tests.unit.ops._check import IN_CHILD, assert_matches, interp, leaf, run_file_in_interpreter


def _targets(n, vocab, ignored=(), seed=0):
    t = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))
    t[list(ignored)] = -100
    return t


def _check(impl, dtype, n, vocab, d, chunk, reduction, bias, ignored):
    h, w = leaf((n, d), dtype, 1), leaf((vocab, d), dtype, 2, scale=0.3)
    b = leaf((vocab,), dtype, 3) if bias else None
    t = _targets(n, vocab, ignored)
    inputs = (h, w) + ((b,) if bias else ())

    def fused(*a):
        return fused_linear_cross_entropy(a[0], a[1], t, a[2] if bias else None, reduction=reduction,
                                          chunk_size=chunk, impl=impl)

    def ref(*a):
        return linear_cross_entropy_ref(a[0], a[1], t, a[2] if bias else None, reduction=reduction)

    assert_matches(fused, ref, inputs)


# (N, V, d, chunk): chunks that do not divide N, V not a power of two and swept in several blocks
# (MAX_BLOCK_V is lowered to 16 below), one token
CASES = [(13, 67, 24, 5), (1, 50, 8, 4), (9, 33, 12, 9)]


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_reference(case, dtype, monkeypatch):
    monkeypatch.setattr(ce_mod, "MAX_BLOCK_V", 16)
    n, vocab, d, chunk = case
    reduction = "sum" if n == 9 else "mean"
    _check("triton", dtype, n, vocab, d, chunk, reduction, bias=(n == 13), ignored=[i for i in (0, 4) if i < n])


@interp
def test_triton_all_ignored_is_zero():
    h, w = leaf((4, 8), torch.float32, 1), leaf((20, 8), torch.float32, 2)
    loss = fused_linear_cross_entropy(h, w, torch.full((4,), -100), impl="triton")
    loss.backward()
    assert loss.item() == 0.0 and h.grad.abs().sum() == 0 and w.grad.abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_chunked_path_matches_reference(dtype):
    _check("torch", dtype, 11, 40, 16, 4, "mean", bias=True, ignored=[2, 3])


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1, 37, 4096 + 5])
def test_scale_kernel_is_bitwise_mul(dtype, n):
    # the backward's in-place grad scaling: the fp32 product rounded once to the grad's dtype (as the CPU's
    # Tensor.mul_ by a 0-dim fp32 tensor computes it)
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dtype)
    g = torch.tensor(0.3712345, dtype=torch.float32)
    want = (x.float() * g).to(dtype)
    assert torch.equal(want, x.clone().mul_(g))
    ce_mod.scale_(x, g, use_triton=True)
    if dtype == torch.bfloat16:
        # the interpreter truncates fp32 -> bf16 where the GPU rounds to nearest even (bitwise there:
        # tests/gpu/test_ops_gpu.py), so on the CPU allow one bf16 step
        torch.testing.assert_close(x, want, rtol=2 ** -7, atol=0)
    else:
        assert torch.equal(x, want)


def test_grad_output_scaling_and_no_grad():
    h, w = leaf((6, 8), torch.float32, 1), leaf((30, 8), torch.float32, 2)
    t = _targets(6, 30, [1])
    (2.5 * fused_linear_cross_entropy(h, w, t, chunk_size=4)).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    (2.5 * linear_cross_entropy_ref(h, w, t)).backward()
    torch.testing.assert_close(gh, h.grad)
    torch.testing.assert_close(gw, w.grad)
    with torch.no_grad():
        torch.testing.assert_close(fused_linear_cross_entropy(h, w, t), linear_cross_entropy_ref(h, w, t))


def test_ignore_index_other_value_and_errors():
    h, w = torch.randn(5, 4), torch.randn(9, 4)
    t = torch.tensor([1, 7, 0, 7, 3])
    torch.testing.assert_close(
        fused_linear_cross_entropy(h, w, t, ignore_index=7),
        linear_cross_entropy_ref(h, w, t, ignore_index=7),
    )
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(h, w, t, reduction="none")
    with pytest.raises(ValueError, match="targets"):
        fused_linear_cross_entropy(h, w, t[:3])
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_cross_entropy(h, w, t, chunk_size=0)


@pytest.mark.skipif(IN_CHILD, reason="this is the launcher")
def test_triton_kernels_under_interpreter():
    run_file_in_interpreter(__file__)
