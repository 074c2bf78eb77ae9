"""Shared checks for the op tests: run an op and its reference, compare outputs and every input gradient.
The op test files also take the Triton-interpreter launcher from here (it lives in tests/triton_interp.py)."""
from __future__ import annotations

import torch

from tests.triton_interp import IN_CHILD, interp, run_file_in_interpreter  # noqa: F401 (for the op tests)

# per-dtype (atol, rtol): fp32 differs by accumulation order only; bf16/fp16 by a rounding or two. For the
# half types atol is scaled by max|ref| (sums such as dW are compared at their own magnitude), and it covers the
# Triton interpreter rounding fp32 -> bf16 toward zero where GPUs round to nearest even.
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (3e-2, 2e-2), torch.float16: (4e-3, 4e-3)}


def leaf(shape, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype).requires_grad_(True)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def run_with_grads(fn, inputs, out_grads=None):
    """Outputs of fn(*inputs) and the gradients of every input that requires grad."""
    outs = _as_tuple(fn(*inputs))
    if out_grads is None:
        gen = torch.Generator().manual_seed(123)
        out_grads = tuple(torch.randn(o.shape, generator=gen).to(o.dtype) for o in outs)
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(outs, wrt, out_grads)
    return outs, grads, out_grads


def assert_matches(fn, ref, inputs, tol_dtype=None):
    """fn and ref agree on outputs (values and dtypes) and on all input gradients, within the dtype tolerance."""
    outs, grads, out_grads = run_with_grads(fn, inputs)
    r_outs, r_grads, _ = run_with_grads(ref, inputs, out_grads)
    dtype = tol_dtype or next(t.dtype for t in inputs if isinstance(t, torch.Tensor))
    for o, r in list(zip(outs, r_outs)) + list(zip(grads, r_grads)):
        assert o.dtype == r.dtype and o.shape == r.shape
        assert_close_dtype(o, r, dtype)


def assert_close_dtype(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Elementwise closeness with the tolerance of `dtype` (see TOL)."""
    atol, rtol = TOL[dtype]
    if dtype != torch.float32 and ref.numel():
        atol *= max(1.0, ref.float().abs().max().item())
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
