"""One-pass AdamW over a flat fp32 region: grad scale, weight decay, Adam moments, update and model-param cast.

The mixed-precision optimizer otherwise spends separate passes on the clip multiply, torch's AdamW and the
fp32 -> bf16 copy into the model's params. ``fused_adamw_step`` reads grad (fp32/bf16/fp16), main, m and v
once and writes main, m, v and the low-precision model copy once.

Math (per element; torch.optim.AdamW's order of operations, decoupled weight decay):
    g = float(grad) * grad_scale                         # unscale * clip coefficient: a device tensor, no sync
    p = p * (1 - lr * wd)                                # only where the element is decayed
    m = lerp(m, g, 1 - beta1)                            # torch's lerp: fma(w, g - m, m) for w < 0.5
    v = fma((1 - beta2) * g, g, v * beta2)          # torch's CPU addcmul_ contracts to an fma
    denom = sqrt(v) / sqrt(1 - beta2^step) + eps
    p = p + (-(lr / (1 - beta1^step)) * m) / denom
    out = cast(p)                                        # the model's bf16/fp16 param, when given
Split main params (``main_lo``): instead of a separate fp32 copy (4 bytes per param besides the model's bf16
param), the fp32 value is kept as two halves: the model's bf16 param is its high 16 bits (rounded, see
``split_main``) and an int16 tensor holds the low 16 bits. The kernel joins them exactly, updates, and splits
again: 2 bytes per param less memory and 2 fewer bytes moved per step (28 instead of 30), with the same fp32
update. The model's weights are then the fp32 values rounded half away from zero instead of half to even: they
differ only where the low half is exactly 0x8000.

Scalars (1 - lr*wd, the bias corrections) are computed in Python doubles, as torch's foreach AdamW does, and
rounded once to fp32. sqrt and division use IEEE round-to-nearest (tl.sqrt_rn, tl.div_rn), not the faster
approximate forms, so the result is torch's to within fma contraction (a few ulp).

Weight decay per element (a region mixes 2-D decayed and 1-D undecayed params, at arbitrary offsets): a
``DecayPlan`` gives every BLOCK-sized block of the region a row code: 0 = no element decayed, 1 = every element
decayed, k >= 2 = mixed, with its per-element uint8 flags in row k of a small table. Only blocks straddling a
param boundary are mixed (about two per boundary), so the table is a few KB; uniform blocks read no flags.
Padding elements (between or after params in a bucket or shard) are updated like the others but belong to
no param, so nothing reads them; with the usual zero grads they stay zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from utils.triton_env import LazyKernel, interpret_mode, triton_available

try:  # optional: without triton only the torch reference path is available
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    tl = None

BLOCK = 1024  # elements per program: 8 per thread with 4 warps, vectorized 16-byte loads of fp32
NUM_WARPS = 4
_GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------- decay plan
@dataclass
class DecayPlan:
    """Which elements of a flat region get weight decay (see the module docstring).

    ``rows``: int32 (n_blocks,), the row code of each block; ``flags``: uint8 (n_rows, block), rows 0 and 1
    all-zero and all-one, then one row per mixed block.
    """

    numel: int
    block: int
    rows: torch.Tensor
    flags: torch.Tensor

    def mask(self) -> torch.Tensor:
        """The per-element bool mask (numel,) (for the reference path and tests)."""
        return self.flags[self.rows.long()].reshape(-1)[: self.numel].bool()


def build_decay_plan(numel: int, decayed: list[tuple[int, int]], device, block: int = BLOCK) -> DecayPlan:
    """A DecayPlan for a region of ``numel`` elements whose decayed elements are the [start, end) ranges.

    1. Mark the decayed ranges in a host uint8 array padded to whole blocks.
    2. Blocks with no marks get row 0, fully marked blocks row 1, the others rows 2, 3, ... in order.
    3. The flag table is rows 0 and 1 followed by the mixed blocks' marks, moved to ``device``.
    """
    if numel < 0 or block <= 0 or block & (block - 1):
        raise ValueError(f"need numel >= 0 and a power-of-two block, got numel={numel}, block={block}")
    n_blocks = max(1, math.ceil(numel / block))
    marks = torch.zeros(n_blocks * block, dtype=torch.uint8)
    for start, end in decayed:
        if not 0 <= start <= end <= numel:
            raise ValueError(f"decayed range [{start}, {end}) is outside the region [0, {numel})")
        marks[start:end] = 1
    per_block = marks.view(n_blocks, block)
    counts = per_block.sum(dim=1, dtype=torch.int64)
    mixed = (counts > 0) & (counts < block)
    rows = (counts == block).to(torch.int32)
    rows[mixed] = 2 + torch.arange(int(mixed.sum()), dtype=torch.int32)
    base = torch.stack([torch.zeros(block, dtype=torch.uint8), torch.ones(block, dtype=torch.uint8)])
    flags = torch.cat([base, per_block[mixed]])
    return DecayPlan(numel, block, rows.to(device), flags.to(device))


# ----------------------------------------------------------------------------------------------- kernel
def _adamw_kernel(
    P, LO, G, M, V, OUT, ROWS, FLAGS, SCALE,
    n, decay_factor, lerp_w, beta2, one_minus_beta2, neg_step_size, bc2_sqrt, eps,
    HAS_OUT: tl.constexpr, HAS_PLAN: tl.constexpr, LERP_SMALL: tl.constexpr, BF16_BY_BITS: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK: tl.constexpr,
):
    # Steps: 1. load one block of p (SPLIT: join the bf16 param's bits and the low 16 bits), g, m, v (g cast to
    # fp32 and scaled); 2. weight decay by the block's row code (uniform blocks read no flags); 3. Adam moments
    # and the bias-corrected update; 4. store p (SPLIT: split it again), m, v and the cast model param.
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(SCALE)
    if SPLIT:
        # P and LO are int16 views: the high half (the bf16 param) zero-extended, the low half sign-extended;
        # the int32 sum wraps exactly as the bit pattern needs (see split_main)
        hi = tl.load(P + offs, mask=mask, other=0).to(tl.int32) & 0xFFFF
        lo = tl.load(LO + offs, mask=mask, other=0).to(tl.int32)
        p = ((hi << 16) + lo).to(tl.float32, bitcast=True)
    else:
        p = tl.load(P + offs, mask=mask, other=0.0)
    m = tl.load(M + offs, mask=mask, other=0.0)
    v = tl.load(V + offs, mask=mask, other=0.0)
    if HAS_PLAN:
        row = tl.load(ROWS + pid)
        if row >= 2:
            d = tl.load(FLAGS + row.to(tl.int64) * BLOCK + tl.arange(0, BLOCK))
            p = tl.where(d != 0, p * decay_factor, p)
        elif row == 1:
            p = p * decay_factor
    else:
        p = p * decay_factor
    if LERP_SMALL:
        m = tl.fma(g - m, lerp_w, m)
    else:
        m = tl.fma(g - m, lerp_w - 1.0, g)
    v = tl.fma(one_minus_beta2 * g, g, v * beta2)
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    p = p + tl.div_rn(neg_step_size * m, denom)
    if SPLIT:
        # high half rounded half away from zero in magnitude, low half the signed remainder in [-2^15, 2^15)
        ub = p.to(tl.uint32, bitcast=True)
        hi = (ub + 0x8000) >> 16
        lo = ub - (hi << 16)
        is_nan = p != p
        hi = tl.where(is_nan, (ub >> 16) | 0x40, hi)
        lo = tl.where(is_nan, 0, lo)
        tl.store(P + offs, hi.to(tl.int16), mask=mask)
        tl.store(LO + offs, lo.to(tl.int16), mask=mask)
    else:
        tl.store(P + offs, p, mask=mask)
    tl.store(M + offs, m, mask=mask)
    tl.store(V + offs, v, mask=mask)
    if HAS_OUT:
        if BF16_BY_BITS:
            # the interpreter's fp32 -> bf16 cast truncates where GPUs round to nearest even: round here in
            # integer ops (add 0x7FFF plus the lowest kept bit, drop 16 bits), keeping NaN a NaN
            bits = p.to(tl.uint32, bitcast=True)
            hi = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            hi = tl.where(p != p, (bits >> 16) | 0x40, hi)
            tl.store(OUT + offs, hi.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
        else:
            tl.store(OUT + offs, p.to(OUT.dtype.element_ty), mask=mask)


_adamw = LazyKernel(_adamw_kernel)


# ----------------------------------------------------------------------------------------------- launcher
@dataclass(frozen=True)
class _Scalars:
    decay_factor: float
    lerp_w: float
    neg_step_size: float
    bc2_sqrt: float


def _scalars(lr: float, weight_decay: float, beta1: float, beta2: float, step: int) -> _Scalars:
    """Python-double scalars exactly as torch's foreach AdamW forms them."""
    return _Scalars(1 - lr * weight_decay, 1 - beta1, (lr / (1 - beta1 ** step)) * -1, (1 - beta2 ** step) ** 0.5)


def _check(main, grad, exp_avg, exp_avg_sq, param_out, decay, step, grad_scale, main_lo=None) -> None:
    """TypeError/ValueError for misuse: every tensor flat, contiguous, same size and device; dtypes as documented."""
    n = main.numel()
    fp32 = [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    if main_lo is None:
        fp32.append(("main", main))
    elif main.dtype != torch.bfloat16 or main_lo.dtype != torch.int16:
        raise TypeError(f"split main params need main in bfloat16 (the model's params) and main_lo in int16, got "
                        f"{main.dtype} and {main_lo.dtype}")
    elif param_out is not None:
        raise ValueError("with main_lo the bf16 half is the model's param itself: pass param_out=None")
    for name, t in fp32:
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype}")
    named = [("main", main), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    if param_out is not None:
        named.append(("param_out", param_out))
    if main_lo is not None:
        named.append(("main_lo", main_lo))
    for name, t in named:
        if t.dim() != 1 or not t.is_contiguous() or t.numel() != n or t.device != main.device:
            raise ValueError(f"{name} must be a contiguous 1-D tensor of {n} elements on {main.device}, got shape "
                             f"{tuple(t.shape)}, strides {t.stride()} on {t.device}")
    if grad.dtype not in _GRAD_DTYPES:
        raise TypeError(f"grad must be float32, bfloat16 or float16, got {grad.dtype}")
    if param_out is not None and param_out.dtype not in _OUT_DTYPES:
        raise TypeError(f"param_out must be float32, bfloat16 or float16, got {param_out.dtype}")
    if step < 1:
        raise ValueError(f"step counts optimizer steps from 1 (bias correction), got {step}")
    if grad_scale is not None and (grad_scale.dim() != 0 or grad_scale.dtype != torch.float32
                                   or grad_scale.device != main.device):
        raise TypeError(f"grad_scale must be a 0-dim float32 tensor on {main.device}, got shape "
                        f"{tuple(grad_scale.shape)}, {grad_scale.dtype} on {grad_scale.device}")
    if decay is not None and decay.numel != n:
        raise ValueError(f"the DecayPlan covers {decay.numel} elements but the region has {n}")


def fused_adamw_step(
    main: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
    param_out: torch.Tensor | None, *, lr: float, weight_decay: float, beta1: float, beta2: float, eps: float,
    step: int, grad_scale: torch.Tensor | None = None, decay: DecayPlan | None = None, impl: str = "auto",
    main_lo: torch.Tensor | None = None,
) -> None:
    """One AdamW step on a flat fp32 region in place (see the module docstring for the math).

    ``step`` is this step's 1-based count (bias correction). ``grad_scale`` (0-dim fp32 on the device, or None
    for 1) multiplies the grads. ``decay`` limits weight decay to its marked elements; None decays every
    element by ``weight_decay`` (pass 0.0 for none). ``param_out`` (or None) receives the cast result.
    ``main_lo`` (int16) selects split main params: ``main`` is then the model's bf16 params, the high half of
    the fp32 values (see ``split_main``), and is updated in place with them.
    impl: "triton" (CUDA, or the CPU interpreter with TRITON_INTERPRET=1), "torch" (``fused_adamw_ref``) or
    "auto" (triton on CUDA when importable, else torch).
    """
    _check(main, grad, exp_avg, exp_avg_sq, param_out, decay, step, grad_scale, main_lo)
    impl = _resolve(impl, main.device)
    kw = dict(lr=lr, weight_decay=weight_decay, beta1=beta1, beta2=beta2, eps=eps, step=step,
              grad_scale=grad_scale, decay=decay)
    if impl == "torch" and main_lo is not None:
        full = join_main(main, main_lo)
        fused_adamw_ref(full, grad, exp_avg, exp_avg_sq, None, **kw)
        hi, lo = split_main(full)
        main.copy_(hi)
        main_lo.copy_(lo)
        return
    if impl == "torch":
        fused_adamw_ref(main, grad, exp_avg, exp_avg_sq, param_out, **kw)
        return
    n = main.numel()
    if n == 0:
        return
    s = _scalars(lr, weight_decay, beta1, beta2, step)
    if grad_scale is None:
        grad_scale = torch.ones((), dtype=torch.float32, device=main.device)
    block = decay.block if decay is not None else BLOCK
    rows = decay.rows if decay is not None else grad_scale
    flags = decay.flags if decay is not None else grad_scale
    grid = (_cdiv(n, block),)
    split = main_lo is not None
    p_arg = main.view(torch.int16) if split else main
    _adamw[grid](
        p_arg, main_lo if split else p_arg, grad, exp_avg, exp_avg_sq, param_out if param_out is not None else main,
        rows, flags, grad_scale,
        n, s.decay_factor, s.lerp_w, beta2, 1 - beta2, s.neg_step_size, s.bc2_sqrt, eps,
        HAS_OUT=param_out is not None, HAS_PLAN=decay is not None, LERP_SMALL=abs(s.lerp_w) < 0.5,
        BF16_BY_BITS=interpret_mode() and param_out is not None and param_out.dtype == torch.bfloat16,
        SPLIT=split, BLOCK=block, num_warps=NUM_WARPS,
    )


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _resolve(impl: str, device: torch.device) -> str:
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl={impl!r} is not one of auto, triton, torch")
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton' needs the triton package (pip install triton); or pass impl='torch'")
        if device.type != "cuda" and not interpret_mode():
            raise RuntimeError(f"impl='triton' on a {device.type} tensor needs TRITON_INTERPRET=1 (the Triton CPU "
                               f"interpreter); use impl='auto' or 'torch' off the GPU")
    return impl


def fused_adamw_ref(
    main: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
    param_out: torch.Tensor | None, *, lr: float, weight_decay: float, beta1: float, beta2: float, eps: float,
    step: int, grad_scale: torch.Tensor | None = None, decay: DecayPlan | None = None,
) -> None:
    """Plain-PyTorch reference of ``fused_adamw_step`` (same arguments, same math, torch's AdamW op order)."""
    s = _scalars(lr, weight_decay, beta1, beta2, step)
    g = grad.float()
    if grad_scale is not None:
        g = g * grad_scale
    if decay is None:
        main.mul_(s.decay_factor)
    else:
        main.copy_(torch.where(decay.mask(), main * s.decay_factor, main))
    exp_avg.lerp_(g, s.lerp_w)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / s.bc2_sqrt).add_(eps)
    main.addcdiv_(exp_avg, denom, value=s.neg_step_size)
    if param_out is not None:
        param_out.copy_(main)


# ----------------------------------------------------------------------------------------------- split main params
def split_main(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 values -> (bf16 high half, int16 low half) whose bits join back to exactly ``x`` (``join_main``).

    1. bits = the fp32 bit pattern as an unsigned 32-bit integer (held in int64 here).
    2. hi = (bits + 2^15) >> 16: the bf16 nearest to x, ties rounded away from zero (round-to-nearest-even cannot be
       undone from 16 low bits: the ties just above and just below an even bf16 both round to it).
    3. lo = bits - hi * 2^16, in [-2^15, 2^15): fits int16. NaN keeps a quiet-NaN high half and lo = 0.
    """
    u = x.detach().float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    hi = ((u + 0x8000) >> 16) & 0xFFFF
    lo = u - (hi << 16)
    nan = torch.isnan(x)
    hi = torch.where(nan, (u >> 16) | 0x40, hi)
    lo = torch.where(nan, torch.zeros_like(lo), lo)
    return _to_int16(hi).view(torch.bfloat16), _to_int16(lo)


def join_main(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """The fp32 values of a (bf16 high half, int16 low half) pair (the inverse of ``split_main``)."""
    bits = ((hi.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF) << 16) + lo.to(torch.int64)
    return _to_int32(bits & 0xFFFFFFFF).view(torch.float32)


def _to_int16(u: torch.Tensor) -> torch.Tensor:
    """Integers taken mod 2^16, as the int16 with that bit pattern."""
    return (((u & 0xFFFF) ^ 0x8000) - 0x8000).to(torch.int16)


def _to_int32(u: torch.Tensor) -> torch.Tensor:
    return (((u & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000).to(torch.int32)
