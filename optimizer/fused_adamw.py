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
    P, G, M, V, OUT, ROWS, FLAGS, SCALE,
    n, decay_factor, lerp_w, beta2, one_minus_beta2, neg_step_size, bc2_sqrt, eps,
    HAS_OUT: tl.constexpr, HAS_PLAN: tl.constexpr, LERP_SMALL: tl.constexpr, BF16_BY_BITS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Steps: 1. load one block of p, g, m, v (g cast to fp32 and scaled); 2. weight decay by the block's row
    # code (uniform blocks read no flags); 3. Adam moments and the bias-corrected update; 4. store p, m, v and
    # the cast model param.
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(SCALE)
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


def _check(main, grad, exp_avg, exp_avg_sq, param_out, decay, step, grad_scale) -> None:
    """TypeError/ValueError for misuse: every tensor flat, contiguous, same size and device; dtypes as documented."""
    n = main.numel()
    for name, t in (("main", main), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {t.dtype}")
    named = [("main", main), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
    if param_out is not None:
        named.append(("param_out", param_out))
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
) -> None:
    """One AdamW step on a flat fp32 region in place (see the module docstring for the math).

    ``step`` is this step's 1-based count (bias correction). ``grad_scale`` (0-dim fp32 on the device, or None
    for 1) multiplies the grads. ``decay`` limits weight decay to its marked elements; None decays every
    element by ``weight_decay`` (pass 0.0 for none). ``param_out`` (or None) receives the cast result.
    impl: "triton" (CUDA, or the CPU interpreter with TRITON_INTERPRET=1), "torch" (``fused_adamw_ref``) or
    "auto" (triton on CUDA when importable, else torch).
    """
    _check(main, grad, exp_avg, exp_avg_sq, param_out, decay, step, grad_scale)
    impl = _resolve(impl, main.device)
    if impl == "torch":
        fused_adamw_ref(main, grad, exp_avg, exp_avg_sq, param_out, lr=lr, weight_decay=weight_decay, beta1=beta1,
                        beta2=beta2, eps=eps, step=step, grad_scale=grad_scale, decay=decay)
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
    _adamw[grid](
        main, grad, exp_avg, exp_avg_sq, param_out if param_out is not None else main, rows, flags, grad_scale,
        n, s.decay_factor, s.lerp_w, beta2, 1 - beta2, s.neg_step_size, s.bc2_sqrt, eps,
        HAS_OUT=param_out is not None, HAS_PLAN=decay is not None, LERP_SMALL=abs(s.lerp_w) < 0.5,
        BF16_BY_BITS=interpret_mode() and param_out is not None and param_out.dtype == torch.bfloat16,
        BLOCK=block, num_warps=NUM_WARPS,
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
