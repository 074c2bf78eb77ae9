"""RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, statistics in fp32, output in x.dtype.

Triton path (one launch each way):
- forward: each program normalizes BLOCK_R rows of width D (BLOCK_R > 1 only for narrow rows, so every
  program moves a few KB); it also stores 1/rms per row (fp32) for the backward.
- backward: a persistent grid of a few programs per SM; each walks row blocks with a stride, writes dx and
  accumulates its own fp32 partial of dW in registers; a second small kernel sums the (programs, D) partials
  column by column in fp32 and writes dW in the weight's dtype. No atomics, so dW is deterministic.

The kernels also serve add_rmsnorm.py (constexpr flags add a residual input, store the new residual, add an
incoming residual gradient and write a second input gradient), so both ops share one tested code path.
"""
from __future__ import annotations

import torch

try:  # optional: without triton only the torch reference path is available
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    tl = None

from model.ops._triton_utils import (
    LazyKernel,
    apply_eager,
    cdiv,
    check_float,
    next_power_of_2,
    num_warps_for,
    persistent_programs,
    resolve_impl,
    rows_2d,
)
from model.ops.fp8 import store_e4m3_rows

MAX_ROW_WIDTH = 65536  # a row is held in registers; wider rows would spill


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Plain PyTorch RMSNorm: fp32 statistics, times weight, cast to x.dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


def _norm_fwd_kernel(
    X, R, W, Y, S, RSTD, Q, QSCALE,
    n_rows, n_cols, stride_x, stride_r, stride_y, stride_s, stride_q, eps,
    HAS_R: tl.constexpr, STORE_S: tl.constexpr, FP8_OUT: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Steps: 1. load BLOCK_R rows of x (plus residual) in fp32; 2. optionally round the sum to the residual dtype
    # and store it; 3. rstd = 1/sqrt(mean(s^2)+eps); 4. y = s*rstd*w in Y's dtype; store rstd.
    # FP8_OUT stores y quantized by rows instead (fp8.py's steps: y rounded to Y's dtype first, so the codes are
    # those of quantizing the stored output; the power-of-two scale from the row's amax bits); Y is not written.
    pid = tl.program_id(0)
    rows = (pid * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < n_rows
    cmask = cols < n_cols
    mask = rmask[:, None] & cmask[None, :]
    s = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_R:
        s += tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if STORE_S:
        s_stored = s.to(S.dtype.element_ty)
        tl.store(S + rows[:, None] * stride_s + cols[None, :], s_stored, mask=mask)
        s = s_stored.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / n_cols + eps)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    y = s * rstd[:, None] * w[None, :]
    if FP8_OUT:
        y = y.to(Y.dtype.element_ty).to(tl.float32)
        store_e4m3_rows(y, Q, QSCALE, rows, cols, rmask, mask, stride_q)
    else:
        tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + rows, rstd, mask=rmask)


def _norm_bwd_kernel(
    DY, X, W, RSTD, DS, DX, DX2, DW_PARTIAL,
    n_rows, n_cols, n_blocks, stride_dy, stride_x, stride_ds, stride_dx, stride_dx2,
    HAS_DS: tl.constexpr, HAS_DX2: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Steps per row block (blocks pid, pid+P, ...): 1. xhat = x*rstd; 2. g = dy*w; 3. dx = rstd*(g - xhat*mean(g*xhat))
    # (+ incoming residual grad DS); 4. store dx (and the same values as DX2 in its dtype); 5. dW partial += dy*xhat.
    # At the end the program writes its dW partial row.
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < n_cols
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for blk in range(pid, n_blocks, n_prog):
        rows = (blk * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        rmask = rows < n_rows
        mask = rmask[:, None] & cmask[None, :]
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        xhat = x * rstd[:, None]
        g = dy * w[None, :]
        c = tl.sum(g * xhat, axis=1) / n_cols
        dx = (g - xhat * c[:, None]) * rstd[:, None]
        if HAS_DS:
            dx += tl.load(DS + rows[:, None] * stride_ds + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_DX2:
            tl.store(DX2 + rows[:, None] * stride_dx2 + cols[None, :], dx.to(DX2.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
    tl.store(DW_PARTIAL + pid * n_cols + cols, tl.sum(dw_acc, axis=0), mask=cmask)


def _colsum_kernel(P, OUT, n_rows, n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # One program per BLOCK_C columns: 1. accumulate BLOCK_R-row tiles of the fp32 partials; 2. reduce the tile
    # over its rows; 3. store the column sums in OUT's dtype (one rounding, after the fp32 sum).
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < n_cols
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for start in range(0, n_rows, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        mask = (rows < n_rows)[:, None] & cmask[None, :]
        acc += tl.load(P + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    tl.store(OUT + cols, tl.sum(acc, axis=0).to(OUT.dtype.element_ty), mask=cmask)


_norm_fwd = LazyKernel(_norm_fwd_kernel)
_norm_bwd = LazyKernel(_norm_bwd_kernel)
_colsum = LazyKernel(_colsum_kernel)

# 128 programs of 16 columns at D = 2048, 8 warps over 128-row tiles: 2.3 us for (528, 2048) fp32 partials on an
# H100 (a one-off sweep not kept in bench/, CUDA-graph device time, 2026-11-23; 32 columns x 64 rows x 4 warps: 5.9 us, torch's
# sum(0) plus the cast: 9.5 us)
COLSUM_BLOCK_C, COLSUM_BLOCK_R, COLSUM_WARPS = 16, 128, 8


def colsum_triton(partial: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Column sums of a contiguous fp32 (P, D) tensor, in `dtype`: a (D,) tensor.

    Replaces partial.sum(0).to(dtype): inside the training step torch's reduction over the outer dim took 26 us
    at (528, 2048) on an H100 (plus a cast kernel), once per norm per step; this kernel reads the partials once
    and casts on store.
    """
    n_rows, n_cols = partial.shape
    out = torch.empty((n_cols,), dtype=dtype, device=partial.device)
    _colsum[(cdiv(n_cols, COLSUM_BLOCK_C),)](partial, out, n_rows, n_cols, BLOCK_R=COLSUM_BLOCK_R,
                                             BLOCK_C=COLSUM_BLOCK_C, num_warps=COLSUM_WARPS)
    return out


def _blocks(n_cols: int) -> tuple[int, int]:
    if n_cols > MAX_ROW_WIDTH:
        raise ValueError(f"RMSNorm row width {n_cols} > {MAX_ROW_WIDTH} is not supported by the Triton kernel; use impl='torch'")
    block_d = next_power_of_2(n_cols)
    # About 2048 elements per row block: on an H100 at 16384 x 2048 (bench/sweep_tiles.py, 2026-11-23) one row
    # per block was the fastest forward and within 1% of the best backward.
    block_r = max(1, min(64, 2048 // block_d))
    return block_r, block_d


def _fwd_warps(block_elems: int) -> int:
    # The forward does little arithmetic per byte, so what matters is loads in flight per program: at one row of
    # 2048, 8 warps (Liger's choice too) read 0.04674 ms against 0.0471 for 4 warps on an H100
    # (a one-off probe not kept in bench/, CUDA-graph device time, 2026-11-23; Liger's kernel 0.04665, a plain copy 0.04631).
    return 8 if block_elems >= 2048 else num_warps_for(block_elems)


def norm_fwd_triton(x2, weight, eps, residual2=None, sum_dtype=None, block_r=None, num_warps=None, fp8_out=False):
    """Launch the forward on (N, D) rows. Returns (y, new_residual or None, rstd).

    fp8_out: y is returned as its row-wise e4m3 quantization, a pair (q (N, D), scale (N, 1) fp32), written in
    place of the x.dtype output (model/ops/fp8.py has the scaling math).
    block_r/num_warps override the launch heuristics (bench/sweep_tiles.py uses them to tune).
    """
    n_rows, n_cols = x2.shape
    default_r, block_d = _blocks(n_cols)
    block_r = block_r or default_r
    if fp8_out:
        q = torch.empty((n_rows, n_cols), dtype=torch.float8_e4m3fn, device=x2.device)
        qscale = torch.empty((n_rows, 1), dtype=torch.float32, device=x2.device)
        y = x2  # only its dtype is read (the rounding before the quantization); nothing is written to it
    else:
        y = torch.empty((n_rows, n_cols), dtype=x2.dtype, device=x2.device)
        q = qscale = None
    s = torch.empty((n_rows, n_cols), dtype=sum_dtype, device=x2.device) if sum_dtype is not None else None
    rstd = torch.empty((n_rows,), dtype=torch.float32, device=x2.device)
    out = (q, qscale) if fp8_out else y
    if n_rows == 0:
        return out, s, rstd
    r = residual2 if residual2 is not None else x2
    s_arg = s if s is not None else y
    q_arg, qscale_arg = (q, qscale) if fp8_out else (y, rstd)
    grid = (cdiv(n_rows, block_r),)
    _norm_fwd[grid](
        x2, r, weight, y, s_arg, rstd, q_arg, qscale_arg,
        n_rows, n_cols, x2.stride(0), r.stride(0), y.stride(0), s_arg.stride(0), q_arg.stride(0), float(eps),
        HAS_R=residual2 is not None, STORE_S=s is not None, FP8_OUT=fp8_out, BLOCK_R=block_r, BLOCK_D=block_d,
        num_warps=num_warps or _fwd_warps(block_r * block_d),
    )
    return out, s, rstd


def norm_bwd_triton(dy2, x2, weight, rstd, dx_dtype, ds2=None, dx2_dtype=None, block_r=None, num_warps=None,
                    per_sm=None):
    """Launch the backward. Returns (dx, dx2 or None, dweight in weight.dtype).

    block_r/num_warps/per_sm (programs per SM of the persistent grid) override the launch heuristics.
    """
    n_rows, n_cols = x2.shape
    default_r, block_d = _blocks(n_cols)
    block_r = block_r or default_r
    dx = torch.empty((n_rows, n_cols), dtype=dx_dtype, device=x2.device)
    dx2 = torch.empty((n_rows, n_cols), dtype=dx2_dtype, device=x2.device) if dx2_dtype is not None else None
    if n_rows == 0:
        return dx, dx2, torch.zeros_like(weight)
    n_blocks = cdiv(n_rows, block_r)
    n_prog = persistent_programs(x2.device, n_blocks, per_sm=per_sm or 4)
    partial = torch.empty((n_prog, n_cols), dtype=torch.float32, device=x2.device)
    ds_arg = ds2 if ds2 is not None else dy2
    dx2_arg = dx2 if dx2 is not None else dx
    _norm_bwd[(n_prog,)](
        dy2, x2, weight, rstd, ds_arg, dx, dx2_arg, partial,
        n_rows, n_cols, n_blocks, dy2.stride(0), x2.stride(0), ds_arg.stride(0), dx.stride(0), dx2_arg.stride(0),
        HAS_DS=ds2 is not None, HAS_DX2=dx2 is not None, BLOCK_R=block_r, BLOCK_D=block_d,
        num_warps=num_warps or num_warps_for(block_r * block_d),
    )
    return dx, dx2, colsum_triton(partial, weight.dtype)


def check_norm_args(x: torch.Tensor, weight: torch.Tensor) -> None:
    check_float("x", x)
    check_float("weight", weight)
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match the last dim of x {tuple(x.shape)}; "
            f"weight must be ({x.shape[-1]},)"
        )


class RMSNormFunction(torch.autograd.Function):
    """Autograd wrapper around the Triton RMSNorm kernels; saves x, weight and the per-row rstd."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        x2 = rows_2d(x)
        w = weight.contiguous()
        y, _, rstd = norm_fwd_triton(x2, w, eps)
        ctx.save_for_backward(x2, w, rstd)
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2, w, rstd = ctx.saved_tensors
        dx, _, dw = norm_bwd_triton(rows_2d(dy), x2, w, rstd, dx_dtype=x2.dtype)
        return dx.view(ctx.x_shape), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, impl: str = "auto") -> torch.Tensor:
    """RMSNorm over the last dim of x (any leading shape); output in x.dtype. impl: auto | triton | torch."""
    check_norm_args(x, weight)
    if resolve_impl(impl, x.device) == "torch":
        return rms_norm_ref(x, weight, eps)
    return apply_eager(RMSNormFunction, x, weight, eps)
