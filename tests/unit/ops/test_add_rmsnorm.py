"""Fused residual add + RMSNorm against the reference: both outputs, all three input gradients."""
import pytest
import torch

from model.ops import add_rms_norm, add_rms_norm_ref
from tests.unit.ops._check import IN_CHILD, assert_matches, interp, leaf, run_file_in_interpreter


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 37), (70, 24)])
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_triton_matches_reference(shape, dtype, residual_in_fp32):
    res_dtype = torch.float32 if residual_in_fp32 else dtype
    x = leaf(shape, dtype, seed=1)
    r = leaf(shape, res_dtype, seed=2)
    w = leaf(shape[-1:], dtype, seed=3)

    def fused(a, b, c):
        return add_rms_norm(a, b, c, 1e-5, impl="triton", residual_in_fp32=residual_in_fp32)

    def ref(a, b, c):
        return add_rms_norm_ref(a, b, c, 1e-5, residual_in_fp32=residual_in_fp32)

    assert_matches(fused, ref, (x, r, w))
    normed, new_res = fused(x, r, w)
    assert normed.dtype == dtype and new_res.dtype == res_dtype


@interp
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_first_layer_without_residual(residual_in_fp32):
    x = leaf((4, 3, 20), torch.bfloat16, seed=4)
    w = leaf((20,), torch.bfloat16, seed=5)
    assert_matches(
        lambda a, c: add_rms_norm(a, None, c, 1e-5, impl="triton", residual_in_fp32=residual_in_fp32),
        lambda a, c: add_rms_norm_ref(a, None, c, 1e-5, residual_in_fp32=residual_in_fp32),
        (x, w),
    )


@interp
def test_only_normed_output_used():
    x, r, w = leaf((5, 12), torch.float32, 1), leaf((5, 12), torch.float32, 2), leaf((12,), torch.float32, 3)
    normed, _ = add_rms_norm(x, r, w, 1e-5, impl="triton")
    normed.sum().backward()
    grads = [t.grad.clone() for t in (x, r, w)]
    for t in (x, r, w):
        t.grad = None
    add_rms_norm_ref(x, r, w, 1e-5)[0].sum().backward()
    for g, t in zip(grads, (x, r, w)):
        torch.testing.assert_close(g, t.grad)


def test_reference_semantics_and_errors():
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    r = torch.randn(2, 8)
    w = torch.ones(8, dtype=torch.bfloat16)
    normed, new_res = add_rms_norm(x, r, w, 1e-5)
    torch.testing.assert_close(new_res, r + x.float())
    assert normed.dtype == torch.bfloat16 and new_res.dtype == torch.float32
    with pytest.raises(ValueError, match="residual shape"):
        add_rms_norm(x, r[:1], w, 1e-5)


@pytest.mark.skipif(IN_CHILD, reason="this is the launcher")
def test_triton_kernels_under_interpreter():
    run_file_in_interpreter(__file__)
