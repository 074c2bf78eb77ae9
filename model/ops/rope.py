"""Rotary position embedding (rotate-half layout, as Hugging Face Llama), applied to q and k in one launch.

Layout: q (B, T, Hq, D), k (B, T, Hk, D) (Hk may differ from Hq: GQA/MQA); any strides as long as the last dim
is contiguous, so q and k can be views into a fused qkv projection. cos/sin are fp32 (T, D/2) (the first T rows of
a longer table are fine) or (B, T, D/2) when already gathered by position_ids ((1, T, D/2) broadcasts).
For each head, with x1 = x[..., :D/2], x2 = x[..., D/2:] and angle a:
    out1 = x1*cos(a) - x2*sin(a),  out2 = x2*cos(a) + x1*sin(a)
The backward is the inverse rotation (the same kernel with sin negated).

Triton path: one program per token (b, t); it loads that token's cos/sin once and rotates every q head and every
k head as two (heads x D/2) tiles. Outputs are new contiguous (B, T, H, D) tensors. Math in fp32.
"""
from __future__ import annotations

import torch

try:  # optional: without triton only the torch reference path is available
    import triton.language as tl
except ImportError:  # pragma: no cover
    tl = None

from model.ops._triton_utils import LazyKernel, check_float, next_power_of_2, num_warps_for, resolve_impl

ROPE_SCALING_TYPES = ("none", "linear", "dynamic")


def rope_cache(
    seq_len: int,
    head_dim: int,
    theta: float,
    scaling_type: str = "none",
    scaling_factor: float = 1.0,
    device=None,
    original_max_seq_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables, fp32 (seq_len, head_dim // 2).

    1. inv_freq[i] = 1 / theta^(2i / head_dim) (computed as Hugging Face does, so exports match bit for bit).
    2. "linear": positions are divided by scaling_factor.
       "dynamic" (NTK): when seq_len > original_max_seq_len, the base grows to
       theta * (factor*seq_len/original - (factor-1))^(D/(D-2)); otherwise the table is unscaled.
    3. angles = positions x inv_freq; return cos and sin.
    """
    if scaling_type not in ROPE_SCALING_TYPES:
        raise ValueError(f"scaling_type={scaling_type!r} is not one of {ROPE_SCALING_TYPES}; fix --rope_scaling_type")
    if head_dim % 2 != 0 or head_dim <= 0:
        raise ValueError(f"head_dim={head_dim} must be a positive even number for RoPE")
    if scaling_type != "none" and scaling_factor <= 0:
        raise ValueError(f"scaling_factor={scaling_factor} must be > 0; fix --rope_scaling_factor")
    base = float(theta)
    if scaling_type == "dynamic":
        original = original_max_seq_len if original_max_seq_len is not None else seq_len
        if seq_len > original:
            base = base * ((scaling_factor * seq_len / original) - (scaling_factor - 1)) ** (head_dim / (head_dim - 2))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).to(torch.float32) / head_dim
    inv_freq = 1.0 / (base**exponents)
    positions = torch.arange(seq_len, dtype=torch.int64, device=device).to(torch.float32)
    if scaling_type == "linear":
        positions = positions / scaling_factor
    angles = torch.outer(positions, inv_freq)
    return angles.cos(), angles.sin()


def _rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    t = x.shape[1]
    c = (cos[:t] if cos.dim() == 2 else cos).float().unsqueeze(-2)
    s = (sin[:t] if sin.dim() == 2 else sin).float().unsqueeze(-2)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def apply_rope_ref(q, k, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch RoPE on q (B,T,Hq,D) and k (B,T,Hk,D); math in fp32, outputs in the input dtypes."""
    return _rotate_ref(q, cos, sin), _rotate_ref(k, cos, sin)


def _rope_kernel(
    Q, K, COS, SIN, QO, KO,
    T, n_qh, n_kh, half,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sc_b, sc_t,
    BACKWARD: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    # Steps: 1. token (b, t) from the program id; 2. load its cos/sin (negate sin for the backward);
    # 3. rotate the (Hq x D/2) halves of q and store to the contiguous output; 4. the same for k.
    pid = tl.program_id(0).to(tl.int64)
    b = pid // T
    t = pid % T
    d = tl.arange(0, BLOCK_HALF)
    dmask = d < half
    c = tl.load(COS + b * sc_b + t * sc_t + d, mask=dmask, other=0.0).to(tl.float32)
    s = tl.load(SIN + b * sc_b + t * sc_t + d, mask=dmask, other=0.0).to(tl.float32)
    if BACKWARD:
        s = -s
    hq = tl.arange(0, BLOCK_QH)
    mq = (hq < n_qh)[:, None] & dmask[None, :]
    q_in = Q + b * sq_b + t * sq_t + hq[:, None] * sq_h + d[None, :]
    q1 = tl.load(q_in, mask=mq, other=0.0).to(tl.float32)
    q2 = tl.load(q_in + half, mask=mq, other=0.0).to(tl.float32)
    q_out = QO + pid * (n_qh * 2 * half) + hq[:, None] * (2 * half) + d[None, :]
    tl.store(q_out, (q1 * c[None, :] - q2 * s[None, :]).to(QO.dtype.element_ty), mask=mq)
    tl.store(q_out + half, (q2 * c[None, :] + q1 * s[None, :]).to(QO.dtype.element_ty), mask=mq)
    hk = tl.arange(0, BLOCK_KH)
    mk = (hk < n_kh)[:, None] & dmask[None, :]
    k_in = K + b * sk_b + t * sk_t + hk[:, None] * sk_h + d[None, :]
    k1 = tl.load(k_in, mask=mk, other=0.0).to(tl.float32)
    k2 = tl.load(k_in + half, mask=mk, other=0.0).to(tl.float32)
    k_out = KO + pid * (n_kh * 2 * half) + hk[:, None] * (2 * half) + d[None, :]
    tl.store(k_out, (k1 * c[None, :] - k2 * s[None, :]).to(KO.dtype.element_ty), mask=mk)
    tl.store(k_out + half, (k2 * c[None, :] + k1 * s[None, :]).to(KO.dtype.element_ty), mask=mk)


_rope = LazyKernel(_rope_kernel)


def _last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _table_strides(cos: torch.Tensor) -> tuple[int, int]:
    if cos.dim() == 2:
        return 0, cos.stride(0)
    return (0 if cos.shape[0] == 1 else cos.stride(0)), cos.stride(1)


def rope_triton(q, k, cos, sin, backward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the RoPE kernel (forward rotation, or its inverse for the backward)."""
    q, k = _last_contiguous(q), _last_contiguous(k)
    cos, sin = _last_contiguous(cos), _last_contiguous(sin)
    if cos.stride() != sin.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    bsz, t, n_qh, dim = q.shape
    n_kh = k.shape[2]
    qo = torch.empty((bsz, t, n_qh, dim), dtype=q.dtype, device=q.device)
    ko = torch.empty((bsz, t, n_kh, dim), dtype=k.dtype, device=k.device)
    if bsz * t == 0:
        return qo, ko
    sc_b, sc_t = _table_strides(cos)
    block_qh, block_kh, block_half = next_power_of_2(n_qh), next_power_of_2(n_kh), next_power_of_2(dim // 2)
    _rope[(bsz * t,)](
        q, k, cos, sin, qo, ko,
        t, n_qh, n_kh, dim // 2,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), sc_b, sc_t,
        BACKWARD=backward, BLOCK_QH=block_qh, BLOCK_KH=block_kh, BLOCK_HALF=block_half,
        num_warps=num_warps_for(2 * (block_qh + block_kh) * block_half),
    )
    return qo, ko


class RoPEFunction(torch.autograd.Function):
    """Autograd wrapper: the backward applies the inverse rotation to dq and dk in one launch."""

    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rope_triton(q, k, cos, sin)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq_in, dk_in = rope_triton(dq, dk, cos, sin, backward=True)
        return dq_in, dk_in, None, None


def _check_rope_args(q, k, cos, sin) -> None:
    check_float("q", q)
    check_float("k", k)
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be (B, T, H, D); got q {tuple(q.shape)} and k {tuple(k.shape)}")
    bsz, t, _, dim = q.shape
    if k.shape[0] != bsz or k.shape[1] != t or k.shape[3] != dim:
        raise ValueError(f"k {tuple(k.shape)} must share B, T and D with q {tuple(q.shape)}")
    if dim % 2:
        raise ValueError(f"head_dim={dim} must be even for RoPE")
    ok_2d = cos.dim() == 2 and cos.shape[0] >= t and cos.shape[1] == dim // 2
    ok_3d = cos.dim() == 3 and cos.shape[0] in (1, bsz) and tuple(cos.shape[1:]) == (t, dim // 2)
    if not (ok_2d or ok_3d) or sin.shape != cos.shape:
        raise ValueError(
            f"cos/sin must be (T>={t}, {dim // 2}) or ({bsz} or 1, {t}, {dim // 2}); got cos {tuple(cos.shape)}, "
            f"sin {tuple(sin.shape)}"
        )


def apply_rope(q, k, cos, sin, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (B,T,Hq,D) and k (B,T,Hk,D) by cos/sin ((T,D/2) or (B,T,D/2)); returns (q_out, k_out)."""
    _check_rope_args(q, k, cos, sin)
    if resolve_impl(impl, q.device) == "torch":
        return apply_rope_ref(q, k, cos, sin)
    if cos.dim() == 2:
        cos, sin = cos[: q.shape[1]], sin[: q.shape[1]]
    return RoPEFunction.apply(q, k, cos, sin)

