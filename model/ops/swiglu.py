"""SwiGLU activation: silu(gate) * up, reading the fused gate/up projection output without a copy.

`swiglu(gate_up)`: gate_up (..., 2I), gate = [..., :I], up = [..., I:] -> (..., I) in the input dtype.
`silu_mul(gate, up)`: the same op for separate gate and up tensors (used when patching Hugging Face MLPs,
which keep two projections).
`swiglu_down(gate_up, down_weight, recompute=True)`: swiglu(gate_up) @ down_weight.T that keeps only gate_up
and the weight for backward and recomputes the SwiGLU output there (activation_checkpointing=selective): the
(..., I) activation is the largest one of a block that costs a single elementwise pass to rebuild.

With FP8 (the model's --fp8): `swiglu(gate_up, fp8_out=True)` returns an fp8.Fp8Input, the output quantized by
rows to e4m3 in the forward kernel's own pass (`_swiglu_fwd_fp8_kernel`: one program holds whole rows, so each
row's amax is taken in registers); `swiglu_down(..., w8=...)` runs the down projection as fp8_linear.py does,
quantizing the SwiGLU output in that same pass (with recompute it is rebuilt in bf16 for the weight gradient).

Triton path: the kernels take separate gate and up pointers with their own row strides, so the fused tensor is
read in place through two views. Programs cover (rows x columns) tiles (several rows per tile for narrow
widths). The backward recomputes silu from the saved input (nothing else is stored) and writes d(gate) and
d(up) straight into the two halves of one (..., 2I) gradient buffer. Math in fp32:
    s = sigmoid(g); out = g*s*u; d_up = dout*g*s; d_gate = dout*u*s*(1 + g*(1 - s))
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional: without triton only the torch reference path is available
    import triton.language as tl
except ImportError:  # pragma: no cover
    tl = None

from model.ops._triton_utils import (
    LazyKernel,
    apply_eager,
    cdiv,
    check_float,
    next_power_of_2,
    num_warps_for,
    resolve_impl,
    rows_2d,
)
from model.ops.fp8 import (FAST_ACCUM_FWD, FP8_DTYPE, Fp8Input, fp8_input_ref, fp8_mm, grad_anchor, quantize_rows_ref,
                           row_blocks, store_e4m3_rows, whole_row_warps)
from model.ops.fp8_linear import Fp8Weight, fp8_dgrad, fp8_linear, weight_grad
from model.ops.linear import linear


def silu_mul_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch silu(gate) * up in fp32, cast to gate.dtype."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def swiglu_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch SwiGLU of a fused (..., 2I) gate/up tensor."""
    gate, up = gate_up.chunk(2, dim=-1)
    return silu_mul_ref(gate, up)


def _swiglu_fwd_kernel(
    G, U, O, n_rows, n_cols, stride_g, stride_u, stride_o,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Steps: 1. tile (rows, cols) from the 2D program id; 2. load gate and up in fp32;
    # 3. out = g*sigmoid(g)*u, stored in O's dtype.
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    g = tl.load(G + rows[:, None] * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + rows[:, None] * stride_u + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(O + rows[:, None] * stride_o + cols[None, :], out.to(O.dtype.element_ty), mask=mask)


def _swiglu_fwd_flat_kernel(
    G, U, O, n_elem, stride_g, stride_u,
    N_COLS: tl.constexpr, BLOCK: tl.constexpr, WIDE_INDEX: tl.constexpr,
):
    # Steps: 1. BLOCK consecutive outputs of the contiguous (N, I) result from the 1D program id (no row-end
    # tiles half masked off); 2. row = idx // I, col = idx % I (I constexpr: division by a constant); 3. load
    # gate and up through their row strides, store g*sigmoid(g)*u.
    if WIDE_INDEX:  # offsets past 2**31: 64-bit index math (slower division, so only when needed)
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n_elem
    row = idx // N_COLS
    col = idx % N_COLS
    g = tl.load(G + row * stride_g + col, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + col, mask=mask, other=0.0).to(tl.float32)
    tl.store(O + idx, (g * tl.sigmoid(g) * u).to(O.dtype.element_ty), mask=mask)


def _swiglu_bwd_kernel(
    DO, G, U, DG, DU, n_rows, n_cols, stride_do, stride_g, stride_u, stride_dg, stride_du,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Steps: 1. reload g, u and dout; 2. recompute s = sigmoid(g); 3. write d_gate and d_up.
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    do = tl.load(DO + rows[:, None] * stride_do + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + rows[:, None] * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + rows[:, None] * stride_u + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    silu = g * s
    dg = do * u * s * (1.0 + g * (1.0 - s))
    tl.store(DG + rows[:, None] * stride_dg + cols[None, :], dg.to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + rows[:, None] * stride_du + cols[None, :], (do * silu).to(DU.dtype.element_ty), mask=mask)


def _swiglu_fwd_fp8_kernel(
    G, U, Q, QSCALE, n_rows, n_cols, stride_g, stride_u, stride_q,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Steps: 1. BLOCK_R whole rows of gate and up in fp32; 2. out = g*sigmoid(g)*u rounded to G's dtype (the codes
    # are those of quantizing the stored bf16 output); 3. fp8.py's row scale from the amax bits (NaN for a row with
    # inf/NaN); 4. store the e4m3 codes and the scales.
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < n_rows
    mask = rmask[:, None] & (cols < n_cols)[None, :]
    g = tl.load(G + rows[:, None] * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + rows[:, None] * stride_u + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    out = (g * tl.sigmoid(g) * u).to(G.dtype.element_ty).to(tl.float32)
    store_e4m3_rows(out, Q, QSCALE, rows, cols, rmask, mask, stride_q)


_swiglu_fwd = LazyKernel(_swiglu_fwd_kernel)
_swiglu_fwd_fp8 = LazyKernel(_swiglu_fwd_fp8_kernel)
_swiglu_fwd_flat = LazyKernel(_swiglu_fwd_flat_kernel)
_swiglu_bwd = LazyKernel(_swiglu_bwd_kernel)


def _tiles(n_rows: int, n_cols: int, tiles=None) -> tuple[int, int, int, tuple[int, int]]:
    """(block_r, block_c, num_warps, grid) of the 2D kernels: one row of up to 2048 columns per program, 16 warps.

    `tiles` = (block_r, block_c, num_warps) replaces the heuristic (bench/sweep_tiles.py passes it).
    bench/sweep_tiles.py on an H100 at 16384 x 5632 (2026-11-23, device time): the backward at (1, 2048, 16)
    took 0.314 ms against 0.321 ms for (2, 1024, 4); narrow rows keep about 2048 elements per program.
    """
    if tiles is not None:
        block_r, block_c, warps = tiles
    else:
        block_c = min(2048, next_power_of_2(n_cols))
        block_r = max(1, min(64, 2048 // block_c))
        warps = 16 if block_c == 2048 else num_warps_for(block_r * block_c)
    return block_r, block_c, warps, (cdiv(n_rows, block_r), cdiv(n_cols, block_c))


def silu_mul_fwd_triton(g2: torch.Tensor, u2: torch.Tensor, flat: bool = True, block: int = 1024,
                        num_warps: int = 8, tiles=None) -> torch.Tensor:
    """(N, I) gate and up views (unit column stride) -> (N, I) output.

    flat: the 1D kernel over the N*I outputs (block outputs per program); otherwise the 2D row x column tiles
    (`tiles` = (block_r, block_c, num_warps) overrides their heuristic). bench/sweep_tiles.py tunes both: on an
    H100 at 16384 x 5632 (2026-11-23, device time) flat with 1024 outputs and 8 warps took 0.180 ms, the best 2D
    tiles 0.187 ms and torch.compile of the reference 0.182 ms.
    """
    n_rows, n_cols = g2.shape
    out = torch.empty((n_rows, n_cols), dtype=g2.dtype, device=g2.device)
    n_elem = n_rows * n_cols
    if n_elem == 0:
        return out
    if flat:
        _swiglu_fwd_flat[(cdiv(n_elem, block),)](
            g2, u2, out, n_elem, g2.stride(0), u2.stride(0),
            N_COLS=n_cols, BLOCK=block, WIDE_INDEX=n_rows * max(g2.stride(0), u2.stride(0)) + block >= 2**31,
            num_warps=num_warps,
        )
        return out
    block_r, block_c, warps, grid = _tiles(n_rows, n_cols, tiles)
    _swiglu_fwd[grid](
        g2, u2, out, n_rows, n_cols, g2.stride(0), u2.stride(0), out.stride(0),
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )
    return out


def silu_mul_fwd_fp8_triton(g2: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, I) gate and up views -> the output quantized by rows: (q (N, I) e4m3, scale (N, 1) fp32)."""
    n_rows, n_cols = g2.shape
    q = torch.empty((n_rows, n_cols), dtype=FP8_DTYPE, device=g2.device)
    scale = torch.empty((n_rows, 1), dtype=torch.float32, device=g2.device)
    if n_rows:
        block_r, block_c = row_blocks(n_cols)
        _swiglu_fwd_fp8[(cdiv(n_rows, block_r),)](
            g2, u2, q, scale, n_rows, n_cols, g2.stride(0), u2.stride(0), q.stride(0),
            BLOCK_R=block_r, BLOCK_C=block_c, num_warps=whole_row_warps(block_r * block_c),
        )
    return q, scale


def silu_mul_bwd_triton(do2, g2, u2, dg2, du2, tiles=None) -> None:
    """Write d(gate) into dg2 and d(up) into du2 (both (N, I), unit column stride).

    `tiles` = (block_r, block_c, num_warps) overrides the launch heuristic (bench/sweep_tiles.py).
    """
    n_rows, n_cols = g2.shape
    if n_rows * n_cols == 0:
        return
    block_r, block_c, warps, grid = _tiles(n_rows, n_cols, tiles)
    _swiglu_bwd[grid](
        do2, g2, u2, dg2, du2, n_rows, n_cols,
        do2.stride(0), g2.stride(0), u2.stride(0), dg2.stride(0), du2.stride(0),
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )


class SwiGLUFunction(torch.autograd.Function):
    """Fused gate_up (..., 2I) -> (..., I); saves only the input."""

    @staticmethod
    def forward(ctx, gate_up):
        x2 = rows_2d(gate_up)
        half = x2.shape[1] // 2
        out = silu_mul_fwd_triton(x2[:, :half], x2[:, half:])
        ctx.save_for_backward(x2)
        ctx.in_shape = gate_up.shape
        return out.view(*gate_up.shape[:-1], half)

    @staticmethod
    def backward(ctx, dout):
        (x2,) = ctx.saved_tensors
        half = x2.shape[1] // 2
        dx = torch.empty((x2.shape[0], 2 * half), dtype=x2.dtype, device=x2.device)
        silu_mul_bwd_triton(rows_2d(dout), x2[:, :half], x2[:, half:], dx[:, :half], dx[:, half:])
        return dx.view(ctx.in_shape)


class SwiGLUFp8Function(torch.autograd.Function):
    """SwiGLUFunction whose output is written in e4m3 with row scales, plus the zero-stride anchor that carries
    d(out) back here (fp8.Fp8Input); the backward is SwiGLUFunction's."""

    @staticmethod
    def forward(ctx, gate_up):
        x2 = rows_2d(gate_up)
        half = x2.shape[1] // 2
        q, scale = silu_mul_fwd_fp8_triton(x2[:, :half], x2[:, half:])
        ctx.save_for_backward(x2)
        ctx.in_shape = gate_up.shape
        lead = gate_up.shape[:-1]
        q, scale = q.view(*lead, half), scale.view(*lead, 1)
        ctx.mark_non_differentiable(q, scale)
        return grad_anchor((*lead, half), gate_up.dtype, gate_up.device), q, scale

    @staticmethod
    def backward(ctx, d_anchor, d_q, d_scale):
        return SwiGLUFunction.backward(ctx, d_anchor)


class SiluMulFunction(torch.autograd.Function):
    """Separate gate and up (..., I) -> (..., I); saves both inputs."""

    @staticmethod
    def forward(ctx, gate, up):
        g2, u2 = rows_2d(gate), rows_2d(up)
        out = silu_mul_fwd_triton(g2, u2)
        ctx.save_for_backward(g2, u2)
        ctx.in_shape = gate.shape
        return out.view(gate.shape)

    @staticmethod
    def backward(ctx, dout):
        g2, u2 = ctx.saved_tensors
        dg = torch.empty_like(g2, memory_format=torch.contiguous_format)
        du = torch.empty_like(u2, memory_format=torch.contiguous_format)
        silu_mul_bwd_triton(rows_2d(dout), g2, u2, dg, du)
        return dg.view(ctx.in_shape), du.view(ctx.in_shape)


def swiglu(gate_up: torch.Tensor, impl: str = "auto", fp8_out: bool = False) -> torch.Tensor | Fp8Input:
    """silu(gate) * up for gate_up (..., 2I) with gate = [..., :I], up = [..., I:]; returns (..., I), or with fp8_out
    its row-wise e4m3 quantization as an Fp8Input (for an FP8 GEMM)."""
    check_float("gate_up", gate_up)
    if gate_up.dim() == 0 or gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up last dim must be even (gate and up halves); got shape {tuple(gate_up.shape)}")
    if resolve_impl(impl, gate_up.device) == "torch":
        out = swiglu_ref(gate_up)
        return fp8_input_ref(out) if fp8_out else out
    if fp8_out:
        anchor, q, scale = apply_eager(SwiGLUFp8Function, gate_up)
        return Fp8Input(q, scale, anchor)
    return apply_eager(SwiGLUFunction, gate_up)


def silu_mul(gate: torch.Tensor, up: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """silu(gate) * up for two tensors of the same shape and dtype."""
    check_float("gate", gate)
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(
            f"gate {tuple(gate.shape)} {gate.dtype} and up {tuple(up.shape)} {up.dtype} must match in shape and dtype"
        )
    if resolve_impl(impl, gate.device) == "torch":
        return silu_mul_ref(gate, up)
    return apply_eager(SiluMulFunction, gate, up)


def swiglu_down_ref(gate_up: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch swiglu(gate_up) @ down_weight.T (stores the SwiGLU output for backward)."""
    return F.linear(swiglu_ref(gate_up), down_weight)


def _swiglu_rows(x2: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """SwiGLU of (N, 2I) rows -> (N, I), no autograd."""
    half = x2.shape[1] // 2
    if use_triton:
        return silu_mul_fwd_triton(x2[:, :half], x2[:, half:])
    return swiglu_ref(x2)


def _swiglu_rows_bwd(d_h: torch.Tensor, x2: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """d(gate_up) (N, 2I) from d(h) (N, I): the Triton backward kernel, or autograd through the reference."""
    if not use_triton:
        with torch.enable_grad():
            x = x2.detach().requires_grad_(True)
            return torch.autograd.grad(swiglu_ref(x), x, d_h)[0]
    half = x2.shape[1] // 2
    dx = torch.empty((x2.shape[0], 2 * half), dtype=x2.dtype, device=x2.device)
    silu_mul_bwd_triton(d_h, x2[:, :half], x2[:, half:], dx[:, :half], dx[:, half:])
    return dx


class SwiGLUDownFunction(torch.autograd.Function):
    """out = swiglu(gate_up) @ W.T, saving gate_up and W only.

    Backward:
    1. flatten to rows: d_out (N, d), gate_up (N, 2I);
    2. recompute h = swiglu(gate_up) (N, I);
    3. dW = d_out^T @ h (offered to the weight-grad sink first, see model/ops/linear.py), d_h = d_out @ W;
    4. d_gate_up from d_h with the SwiGLU backward (it recomputes silu from gate_up itself).
    Without a sink (or when it declines) the weight's grad is returned through autograd, so the Parameter's
    AccumulateGrad and its post-accumulate-grad hooks (DDP bucketing) run as for nn.Linear.
    """

    @staticmethod
    def forward(ctx, gate_up, weight, use_triton: bool, sink=None):
        x2 = rows_2d(gate_up)
        h = _swiglu_rows(x2, use_triton)
        out = F.linear(h, weight)
        ctx.save_for_backward(x2, weight)
        ctx.use_triton, ctx.in_shape, ctx.sink = use_triton, gate_up.shape, sink
        return out.view(*gate_up.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        x2, weight = ctx.saved_tensors
        d_out2 = rows_2d(d_out)
        h = _swiglu_rows(x2, ctx.use_triton)
        d_weight = None
        if ctx.needs_input_grad[1] and (ctx.sink is None or not ctx.sink.accumulate_wgrad(weight, d_out2, h)):
            d_weight = d_out2.t() @ h
        d_gate_up = None
        if ctx.needs_input_grad[0]:
            d_gate_up = _swiglu_rows_bwd(d_out2 @ weight, x2, ctx.use_triton).view(ctx.in_shape)
        return d_gate_up, d_weight, None, None


class Fp8SwiGLUDownFunction(torch.autograd.Function):
    """out = swiglu(gate_up) @ W.T with FP8 GEMMs (fp8_linear.py's recipe), saving gate_up only.

    Forward: the SwiGLU output quantized by rows in the SwiGLU pass, times W's FP8 copy.
    Backward:
    1. flatten to rows: d_out (N, d), gate_up (N, 2I);
    2. dW = d_out^T @ h in bf16 from h = swiglu(gate_up) recomputed (the sink first, as SwiGLUDownFunction);
    3. d_h = d_out @ W through FP8 (fp8_dgrad), then d_gate_up by the SwiGLU backward.
    """

    @staticmethod
    def forward(ctx, gate_up, weight, w8, use_triton: bool, sink=None):
        x2 = rows_2d(gate_up)
        half = x2.shape[1] // 2
        if use_triton:
            q, scale = silu_mul_fwd_fp8_triton(x2[:, :half], x2[:, half:])
        else:
            q, scale = quantize_rows_ref(swiglu_ref(x2))
        out = fp8_mm(q, scale, w8.data, w8.scale, gate_up.dtype, fast_accum=FAST_ACCUM_FWD)
        ctx.save_for_backward(x2)
        ctx.weight, ctx.w8, ctx.use_triton, ctx.in_shape, ctx.sink = weight, w8, use_triton, gate_up.shape, sink
        return out.view(*gate_up.shape[:-1], w8.data.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        (x2,) = ctx.saved_tensors
        d_out2 = rows_2d(d_out)
        impl = "triton" if ctx.use_triton else "torch"
        d_weight = d_gate_up = None
        if ctx.needs_input_grad[1]:
            d_weight = weight_grad(ctx.weight, d_out2, _swiglu_rows(x2, ctx.use_triton), ctx.sink)
        if ctx.needs_input_grad[0]:
            d_h = fp8_dgrad(d_out2, ctx.w8, x2.dtype, impl)
            d_gate_up = _swiglu_rows_bwd(d_h, x2, ctx.use_triton).view(ctx.in_shape)
        return d_gate_up, d_weight, None, None, None


def swiglu_down(gate_up: torch.Tensor, down_weight: torch.Tensor, impl: str = "auto",
                recompute: bool = True, sink=None, w8: Fp8Weight | None = None) -> torch.Tensor:
    """swiglu(gate_up) @ down_weight.T: gate_up (..., 2I), down_weight (d, I) -> (..., d).

    recompute=True stores only gate_up (and the weight) for backward and rebuilds the SwiGLU output there;
    recompute=False is linear(swiglu(gate_up, impl), down_weight, sink=sink), which stores it. `sink` takes the
    weight gradient when it manages the weight (model/ops/linear.py). w8: the weight's FP8 copies
    (fp8_linear.Fp8WeightCache): the GEMMs run in FP8 (fp8_linear.py's recipe); without recompute the SwiGLU
    output is stored in its FP8 form.
    """
    check_float("gate_up", gate_up)
    if gate_up.dim() == 0 or gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up last dim must be even (gate and up halves); got shape {tuple(gate_up.shape)}")
    if down_weight.dim() != 2 or 2 * down_weight.shape[1] != gate_up.shape[-1]:
        raise ValueError(f"down_weight must be (d, I) with 2*I == gate_up.shape[-1]; got down_weight "
                         f"{tuple(down_weight.shape)} and gate_up {tuple(gate_up.shape)}")
    if down_weight.dtype != gate_up.dtype:
        raise TypeError(f"down_weight dtype {down_weight.dtype} must equal gate_up dtype {gate_up.dtype}; "
                        f"cast the model to one dtype")
    use_triton = resolve_impl(impl, gate_up.device) == "triton"
    flag = "triton" if use_triton else "torch"
    if w8 is not None and not recompute:
        return fp8_linear(swiglu(gate_up, impl=flag, fp8_out=True), down_weight, None, w8, sink, impl=flag)
    if w8 is not None:
        return apply_eager(Fp8SwiGLUDownFunction, gate_up, down_weight, w8, use_triton, sink)
    if not recompute:
        return linear(swiglu(gate_up, impl=flag), down_weight, sink=sink)
    return apply_eager(SwiGLUDownFunction, gate_up, down_weight, use_triton, sink)
