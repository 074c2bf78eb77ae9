"""FP8 scaling math: row-wise quantization to e4m3, its plain-PyTorch reference, the Triton kernels, the FP8 GEMM.

The recipe (ARCHITECTURE.md, "FP8 training", says why): a GEMM operand is quantized along its reduction dim, one
scale per row, so that the scales factor out of the sum: y[m, n] = sa[m] * sb[n] * sum_k qa[m, k] * qb[n, k]. This
is what torch._scaled_mm's row-wise mode computes (scale_a (M, 1), scale_b (1, N), fp32 accumulation).

The scale of a row (`fp8_scales_ref`, and the same integer steps inline in every kernel):
1. amax = max |x| over the row, in fp32, floored at AMAX_FLOOR (an all-zero row gets a finite scale and codes 0);
2. scale = the smallest power of two with amax / scale <= 448 (e4m3's largest finite value), read off amax's
   exponent and mantissa bits: no division and no log, so Triton and torch get bitwise the same scale;
3. q = e4m3(x / scale), rounded to nearest even. A power of two makes x / scale and q * scale exact, so the only
   error is e4m3's own rounding (a relative 2^-4, or 2^-10 * scale below e4m3's normal range), and the codes never
   pass 448: amax / scale lands in (224, 448], so nothing saturates except by construction;
4. a row holding an inf or a NaN gets a NaN scale: the GEMM output of that row is NaN, and the step's non-finite
   guard sees it instead of a silently clipped value.

Kernels: `quantize_rows` (one program holds whole rows, the amax is taken in registers) and `dequantize_rows`
(x = q * scale in the model dtype: exact in bf16, whose exponent range is fp32's). The add+RMSNorm and SwiGLU
kernels emit the same quantization of their outputs in their own pass (rmsnorm.py, swiglu.py).

Every kernel that quantizes calls `store_e4m3_rows`, the one device-side copy of steps 1-4 (a JitHelper: jitted
with the kernel on its first launch, so tests can still choose the interpreter); each is tested against
`fp8_scales_ref`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

try:  # optional: without triton only the torch reference path is available
    import triton.language as tl
except ImportError:  # pragma: no cover
    tl = None

from model.ops._triton_utils import (JitHelper, LazyKernel, cdiv, next_power_of_2, num_warps_for, resolve_impl,
                                     rows_2d)

FP8_RECIPES = ("off", "rowwise")
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # e4m3's largest finite value, 1.75 * 2**8
AMAX_FLOOR = 2.0 ** -100  # keeps scale and 1/scale normal fp32 numbers for any row, all-zero ones included
MAX_ROW_WIDTH = 65536  # a row is held in registers by one program
# torch._scaled_mm's use_fast_accum: the forward's output is rounded to bf16 (2^-9) right after, so the tensor
# cores' cheaper accumulation is below its rounding; the input gradient keeps full fp32 accumulation (it feeds
# every earlier layer). bench/fp8_gemm.py times both settings.
FAST_ACCUM_FWD, FAST_ACCUM_DGRAD = True, False
MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer


def fp8_scales_ref(amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, 1/scale) in fp32 for row maxima `amax` (steps 2 and 4 of the module docstring)."""
    a = amax.float().clamp_min(AMAX_FLOOR)
    bits = a.view(torch.int32)
    # amax = m * 2**E with m in [1, 2): amax / 2**(E-8) = m * 256 <= 448 exactly when m <= 1.75 (mantissa bits
    # 0x600000), else one binade more
    e = ((bits >> 23) & 0xFF) - 127 - 8 + ((bits & 0x7FFFFF) > 0x600000).to(torch.int32)
    scale = ((e + 127) << 23).view(torch.float32)
    inv = ((127 - e) << 23).view(torch.float32)
    scale = torch.where(torch.isfinite(amax), scale, torch.full_like(scale, float("nan")))
    return scale, inv


def quantize_rows_ref(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> (q (M, K) e4m3, scale (M, 1) fp32) with x ~= q * scale, each row by its own amax."""
    xf = x2.float()
    scale, inv = fp8_scales_ref(xf.abs().amax(dim=-1, keepdim=True))
    return (xf * inv).to(FP8_DTYPE), scale


def dequantize_rows_ref(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q * scale (row scales (M, 1)) in `dtype`."""
    return (q.float() * scale).to(dtype)


def _store_e4m3_rows(x, Q, QSCALE, rows, cols, rmask, mask, stride_q):
    # The one device-side copy of the scaling math (steps 1-4 of the module docstring) for fp32 rows x
    # (BLOCK_R, BLOCK_K), used by this file's kernel and by the norm and SwiGLU kernels that emit FP8: the scale is
    # the power of two read off the row's amax bits, NaN for a row with inf/NaN (x * 0 sums to NaN then); the e4m3
    # codes x / scale and the scales are stored.
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 7.888609052210118e-31)  # AMAX_FLOOR, 2**-100
    bits = amax.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 135 + ((bits & 0x7FFFFF) > 0x600000).to(tl.int32)
    scale = ((e + 127) << 23).to(tl.float32, bitcast=True) + tl.sum(x * 0.0, axis=1)
    inv = ((127 - e) << 23).to(tl.float32, bitcast=True)
    tl.store(Q + rows[:, None] * stride_q + cols[None, :], (x * inv[:, None]).to(Q.dtype.element_ty), mask=mask)
    tl.store(QSCALE + rows, scale, mask=rmask)


store_e4m3_rows = JitHelper(_store_e4m3_rows)


def _quantize_rows_kernel(
    X, Q, SCALE, n_rows, n_cols, stride_x, stride_q,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Steps: 1. load BLOCK_R whole rows in fp32; 2. amax per row, the power-of-two scale from its bits, NaN for a
    # row with inf/NaN (x * 0 sums to NaN then); 3. store q = x / scale in e4m3 and the scale.
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    rmask = rows < n_rows
    mask = rmask[:, None] & (cols < n_cols)[None, :]
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    store_e4m3_rows(x, Q, SCALE, rows, cols, rmask, mask, stride_q)


def _dequantize_rows_kernel(
    Q, SCALE, Y, n_rows, n_cols, stride_q, stride_y,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Steps: 1. a (rows x columns) tile of codes and the rows' scales; 2. store q * scale in Y's dtype.
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < n_rows
    mask = rmask[:, None] & (cols < n_cols)[None, :]
    q = tl.load(Q + rows[:, None] * stride_q + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(SCALE + rows, mask=rmask, other=0.0)
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], (q * s[:, None]).to(Y.dtype.element_ty), mask=mask)


_quantize_rows = LazyKernel(_quantize_rows_kernel)
_dequantize_rows = LazyKernel(_dequantize_rows_kernel)


def row_blocks(n_cols: int) -> tuple[int, int]:
    """(rows per program, padded row width) of a kernel that holds whole rows: about 2048 elements per program for
    narrow rows, as the RMSNorm forward (rmsnorm.py's tuning)."""
    if n_cols > MAX_ROW_WIDTH:
        raise ValueError(f"an FP8 row of {n_cols} elements is wider than the {MAX_ROW_WIDTH} one program holds; "
                         f"use a narrower layer or --fp8=off")
    block_k = next_power_of_2(n_cols)
    return max(1, min(64, 2048 // block_k)), block_k


def whole_row_warps(block_elems: int) -> int:
    """Warps for a program holding block_elems elements: 16 from 8192 on (a 5632-wide SwiGLU row pads to 8192 and
    holds gate, up and the output), so each thread keeps at most a few dozen values per tensor in registers."""
    return 16 if block_elems >= 8192 else num_warps_for(block_elems)


def quantize_rows(x: torch.Tensor, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of x (..., K) -> (q (N, K) e4m3, scale (N, 1) fp32), N the product of the leading dims."""
    x2 = rows_2d(x)
    if resolve_impl(impl, x2.device) == "torch":
        return quantize_rows_ref(x2)
    n_rows, n_cols = x2.shape
    q = torch.empty((n_rows, n_cols), dtype=FP8_DTYPE, device=x2.device)
    scale = torch.empty((n_rows, 1), dtype=torch.float32, device=x2.device)
    if n_rows:
        block_r, block_k = row_blocks(n_cols)
        _quantize_rows[(cdiv(n_rows, block_r),)](
            x2, q, scale, n_rows, n_cols, x2.stride(0), q.stride(0), BLOCK_R=block_r, BLOCK_K=block_k,
            num_warps=whole_row_warps(block_r * block_k),
        )
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, impl: str = "auto") -> torch.Tensor:
    """(N, K) codes and (N, 1) scales -> (N, K) in dtype."""
    if resolve_impl(impl, q.device) == "torch":
        return dequantize_rows_ref(q, scale, dtype)
    n_rows, n_cols = q.shape
    out = torch.empty((n_rows, n_cols), dtype=dtype, device=q.device)
    if n_rows * n_cols:
        block_c = min(2048, next_power_of_2(n_cols))
        block_r = max(1, min(64, 2048 // block_c))
        _dequantize_rows[(cdiv(n_rows, block_r), cdiv(n_cols, block_c))](
            q, scale, out, n_rows, n_cols, q.stride(0), out.stride(0), BLOCK_R=block_r, BLOCK_C=block_c,
            num_warps=num_warps_for(block_r * block_c),
        )
    return out


class Fp8Input(NamedTuple):
    """A GEMM input as the kernel that produced it emits it: quantized by rows, plus the handle for its gradient.

    anchor is the tensor autograd returns d(x) for. On the fused path it is a zero-stride stand-in of x's shape and
    dtype (`grad_anchor`): no memory, only the edge from the consuming GEMM's backward to the producer's backward
    (an autograd output in fp8 would get its gradient cast to fp8). On the reference path it is x itself.
    """

    data: torch.Tensor  # (..., K) float8_e4m3fn
    scale: torch.Tensor  # (..., 1) float32: x ~= data * scale
    anchor: torch.Tensor  # (..., K) in the model dtype

    @property
    def shape(self) -> torch.Size:
        return self.anchor.shape

    @property
    def device(self) -> torch.device:
        return self.anchor.device


def grad_anchor(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """A tensor of `shape` backed by one element (all strides 0): see Fp8Input."""
    return torch.zeros((), dtype=dtype, device=device).expand(shape)


def fp8_input_ref(x: torch.Tensor) -> Fp8Input:
    """The reference producer: quantize x's rows (outside autograd); x stays the anchor."""
    q, scale = quantize_rows_ref(rows_2d(x.detach()))
    return Fp8Input(q.view(x.shape), scale.view(*x.shape[:-1], 1), x)


def fp8_mm_ref(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
               out_dtype: torch.dtype) -> torch.Tensor:
    """(a * a_scale) @ (b * b_scale)^T in fp32, rounded to out_dtype: a (M, K), b (N, K), scales (M, 1), (N, 1).

    The products of e4m3 codes and power-of-two scales are exact in fp32, so this differs from the tensor cores'
    result by the order of the fp32 sums only.
    """
    return ((a.float() * a_scale) @ (b.float() * b_scale).t()).to(out_dtype)


def fp8_mm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
           out_dtype: torch.dtype, fast_accum: bool) -> torch.Tensor:
    """a @ b^T for row-quantized a (M, K) and b (N, K) (both reduced along K, contiguous): (M, N) in out_dtype.

    CUDA: torch._scaled_mm in its row-wise mode. Its contract: the first operand row-major and the second
    column-major (b^T of a contiguous b is), K and N multiples of 16 (Z2allConfig.validate checks the model's),
    fp32 scales of shapes (M, 1) and (1, N), contiguous. Elsewhere (CPU tests) the same numbers in fp32
    (fp8_mm_ref); fast_accum applies to the GPU only.
    """
    if a.device.type != "cuda":
        return fp8_mm_ref(a, a_scale, b, b_scale, out_dtype)
    return torch._scaled_mm(a, b.t(), scale_a=a_scale, scale_b=b_scale.view(1, -1), out_dtype=out_dtype,
                            use_fast_accum=fast_accum)


def fp8_unsupported(device: torch.device) -> str | None:
    """Why this device cannot run the FP8 GEMMs, or None when it can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the device is {device.type}, and FP8 GEMMs need a CUDA GPU with FP8 tensor cores"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name(device)} has compute capability {cap[0]}.{cap[1]}, and FP8 tensor "
                f"cores need {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ada, Hopper)")
    return None


def check_fp8(recipe: str, device: torch.device, dtype: torch.dtype) -> None:
    """ValueError (one line) when --fp8=recipe cannot run on this device with these params."""
    if recipe == "off":
        return
    why = fp8_unsupported(device)
    if why is not None:
        raise ValueError(f"--fp8={recipe} needs FP8 tensor cores: {why}; use --fp8=off")
    if dtype != torch.bfloat16:
        raise ValueError(f"--fp8={recipe} needs bfloat16 params (its GEMMs write bf16), got {dtype}; "
                         f"use --dtype=bfloat16 or --fp8=off")
