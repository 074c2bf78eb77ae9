"""Fused residual add + RMSNorm: new_residual = residual + x; normed = rmsnorm(new_residual).

One forward pass reads x and the residual once and writes both the new residual (fp32 when residual_in_fp32,
else x.dtype) and the normed output (x.dtype). The norm is taken of the stored (rounded) new residual, so the
result equals running the two steps separately. The backward is one pass too: the RMSNorm input gradient plus
the gradient arriving at new_residual, written once as d(x) in x.dtype and once as d(residual) in the
residual's dtype. The kernels live in rmsnorm.py (constexpr flags), shared with plain RMSNorm.

fp8_out=True (the model's --fp8, for the qkv and gate_up projections that read the normed output): the same pass
writes the normed rows quantized to e4m3 with their per-row scales instead of the x.dtype output, returned as an
fp8.Fp8Input; the backward is unchanged (it needs only the new residual, the weight and rstd, which it saves).
"""
from __future__ import annotations

import torch

from model.ops._triton_utils import apply_eager, check_float, resolve_impl, rows_2d
from model.ops.fp8 import Fp8Input, fp8_input_ref, grad_anchor
from model.ops.rmsnorm import check_norm_args, norm_bwd_triton, norm_fwd_triton, rms_norm_ref


def _residual_dtype(x: torch.Tensor, residual_in_fp32: bool) -> torch.dtype:
    return torch.float32 if residual_in_fp32 else x.dtype


def add_rms_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    residual_in_fp32: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch add + RMSNorm. Returns (normed in x.dtype, new_residual)."""
    res_dtype = _residual_dtype(x, residual_in_fp32)
    if residual is None:
        new_residual = x.to(res_dtype)
    else:
        new_residual = (residual.float() + x.float()).to(res_dtype)
    return rms_norm_ref(new_residual, weight, eps).to(x.dtype), new_residual


def _forward(ctx, x, residual, weight, eps, res_dtype, fp8_out: bool):
    """The forward launch of both Functions; saves what the backward needs. Returns (normed rows, new residual)."""
    x2 = rows_2d(x)
    r2 = rows_2d(residual) if residual is not None else None
    w = weight.contiguous()
    y, s, rstd = norm_fwd_triton(x2, w, eps, residual2=r2, sum_dtype=res_dtype, fp8_out=fp8_out)
    ctx.save_for_backward(s, w, rstd)
    ctx.x_shape = x.shape
    ctx.x_dtype = x.dtype
    ctx.res_in_dtype = residual.dtype if residual is not None else None
    ctx.set_materialize_grads(False)
    return y, s.view(x.shape)


class AddRMSNormFunction(torch.autograd.Function):
    """Autograd wrapper: saves the new residual, weight and rstd; grads for x, residual and weight."""

    @staticmethod
    def forward(ctx, x, residual, weight, eps, res_dtype):
        y, s = _forward(ctx, x, residual, weight, eps, res_dtype, fp8_out=False)
        return y.view(x.shape), s

    @staticmethod
    def backward(ctx, dy, ds):
        s2, w, rstd = ctx.saved_tensors
        dy2 = rows_2d(dy) if dy is not None else torch.zeros_like(s2, dtype=ctx.x_dtype)
        ds2 = rows_2d(ds) if ds is not None else None
        dx, dres, dw = norm_bwd_triton(
            dy2, s2, w, rstd, dx_dtype=ctx.x_dtype, ds2=ds2, dx2_dtype=ctx.res_in_dtype
        )
        dres = dres.view(ctx.x_shape) if dres is not None else None
        return dx.view(ctx.x_shape), dres, dw, None, None


class AddRMSNormFp8Function(torch.autograd.Function):
    """AddRMSNormFunction whose normed output is written in e4m3 with row scales (Fp8Input's data and scale), plus
    the zero-stride anchor that carries d(normed) back here; the backward is AddRMSNormFunction's."""

    @staticmethod
    def forward(ctx, x, residual, weight, eps, res_dtype):
        (q, scale), s = _forward(ctx, x, residual, weight, eps, res_dtype, fp8_out=True)
        q, scale = q.view(x.shape), scale.view(*x.shape[:-1], 1)
        ctx.mark_non_differentiable(q, scale)
        return grad_anchor(x.shape, x.dtype, x.device), q, scale, s

    @staticmethod
    def backward(ctx, d_anchor, d_q, d_scale, ds):
        return AddRMSNormFunction.backward(ctx, d_anchor, ds)


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    impl: str = "auto",
    residual_in_fp32: bool = True,
    fp8_out: bool = False,
) -> tuple[torch.Tensor | Fp8Input, torch.Tensor]:
    """(normed, new_residual) with new_residual = residual + x (residual None -> x), kept in fp32 when
    residual_in_fp32 else x.dtype, and normed = rmsnorm(new_residual) * weight in x.dtype; with fp8_out, normed is
    an Fp8Input (its row-wise e4m3 quantization, for an FP8 GEMM)."""
    check_norm_args(x, weight)
    if residual is not None:
        check_float("residual", residual)
        if residual.shape != x.shape:
            raise ValueError(
                f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}; they must match"
            )
    if resolve_impl(impl, x.device) == "torch":
        normed, new_residual = add_rms_norm_ref(x, residual, weight, eps, residual_in_fp32)
        return (fp8_input_ref(normed) if fp8_out else normed), new_residual
    if fp8_out:
        anchor, q, scale, new_residual = apply_eager(AddRMSNormFp8Function, x, residual, weight, eps,
                                                     _residual_dtype(x, residual_in_fp32))
        return Fp8Input(q, scale, anchor), new_residual
    return apply_eager(AddRMSNormFunction, x, residual, weight, eps, _residual_dtype(x, residual_in_fp32))
