"""Rotary position embedding (rotate-half layout, as Hugging Face Llama), applied to q and k in one launch.

Layout: q (B, T, Hq, D), k (B, T, Hk, D) (Hk may differ from Hq: GQA/MQA); any strides as long as the last dim
is contiguous, so q and k can be views into a fused qkv projection. cos/sin are fp32 (T, D/2) (the first T rows of
a longer table are fine) or (B, T, D/2) when already gathered by position_ids ((1, T, D/2) broadcasts).
For each head, with x1 = x[..., :D/2], x2 = x[..., D/2:] and angle a:
    out1 = x1*cos(a) - x2*sin(a),  out2 = x2*cos(a) + x1*sin(a)
The backward is the inverse rotation (the same kernel with sin negated).

Triton path: one program per token (b, t); it loads that token's cos/sin once and rotates every q head and every
k head as two (heads x D/2) tiles. Outputs are new contiguous (B, T, H, D) tensors. Math in fp32.

`rope_qkv` fuses the split of the qkv projection with RoPE: its forward writes rotated q, rotated k and a copy of
v into ONE new (B, T, Hq+2Hk, D) buffer and returns three views of it, so attention keeps only that buffer alive
(not the projection output as well, which is not saved and is freed); its backward writes d(qkv) from dq, dk, dv
(any strides, None = zeros) in one launch, so no concatenation of the three gradients is needed.
"""
from __future__ import annotations

import torch

try:  # optional: without triton only the torch reference path is available
    import triton.language as tl
except ImportError:  # pragma: no cover
    tl = None

from model.ops._triton_utils import LazyKernel, apply_eager, check_float, next_power_of_2, num_warps_for, resolve_impl

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
    return apply_eager(RoPEFunction, q, k, cos, sin)


# ---------------------------------------------------------------------------------------------
# fused split + RoPE of the qkv projection output


def _split_qkv(qkv: torch.Tensor, n_q_heads: int, n_kv_heads: int):
    """Views q (B,T,Hq,D), k and v (B,T,Hk,D) of qkv (B, T, (Hq+2Hk)*D), heads ordered [q | k | v]."""
    dim = qkv.shape[-1] // (n_q_heads + 2 * n_kv_heads)
    return qkv.unflatten(-1, (n_q_heads + 2 * n_kv_heads, dim)).split([n_q_heads, n_kv_heads, n_kv_heads], dim=2)


def _split_heads(x: torch.Tensor, n_q_heads: int, n_kv_heads: int):
    """Head slices [q | k | v] of a (B, T, Hq+2Hk, D) tensor."""
    return x.split([n_q_heads, n_kv_heads, n_kv_heads], dim=2)


def rope_qkv_ref(qkv, n_q_heads: int, n_kv_heads: int, cos, sin):
    """Plain PyTorch: split qkv into q, k, v, rotate q and k (fp32 math); v is a view of qkv."""
    q, k, v = _split_qkv(qkv, n_q_heads, n_kv_heads)
    q, k = apply_rope_ref(q, k, cos, sin)
    return q, k, v


def _rope_qkv_kernel(
    Q, K, V, COS, SIN, QO, KO, VO,
    T, n_qh, n_kh, half,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, sc_b, sc_t, so_q, so_k, so_v,
    BACKWARD: tl.constexpr, HAS_Q: tl.constexpr, HAS_K: tl.constexpr, HAS_V: tl.constexpr,
    BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    # Steps: 1. token (b, t) from the program id; its output rows start at QO/KO/VO + token * so_* (heads
    # contiguous within a row); 2. load the token's cos/sin (sin negated for the backward: the inverse rotation);
    # 3. rotate the (Hq x D/2) halves of q into QO; 4. k into KO; 5. copy v into VO. A missing input (HAS_*
    # false, a None gradient) writes zeros.
    pid = tl.program_id(0).to(tl.int64)
    b = pid // T
    t = pid % T
    dim = 2 * half
    d = tl.arange(0, BLOCK_HALF)
    dmask = d < half
    c = tl.load(COS + b * sc_b + t * sc_t + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    s = tl.load(SIN + b * sc_b + t * sc_t + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    if BACKWARD:
        s = -s
    hq = tl.arange(0, BLOCK_QH)
    mq = (hq < n_qh)[:, None] & dmask[None, :]
    q_out = QO + pid * so_q + hq[:, None] * dim + d[None, :]
    q1 = tl.zeros((BLOCK_QH, BLOCK_HALF), dtype=tl.float32)
    q2 = tl.zeros((BLOCK_QH, BLOCK_HALF), dtype=tl.float32)
    if HAS_Q:
        q_in = Q + b * sq_b + t * sq_t + hq[:, None] * sq_h + d[None, :]
        q1 = tl.load(q_in, mask=mq, other=0.0).to(tl.float32)
        q2 = tl.load(q_in + half, mask=mq, other=0.0).to(tl.float32)
    tl.store(q_out, (q1 * c - q2 * s).to(QO.dtype.element_ty), mask=mq)
    tl.store(q_out + half, (q2 * c + q1 * s).to(QO.dtype.element_ty), mask=mq)
    hk = tl.arange(0, BLOCK_KH)
    mk = (hk < n_kh)[:, None] & dmask[None, :]
    k_out = KO + pid * so_k + hk[:, None] * dim + d[None, :]
    k1 = tl.zeros((BLOCK_KH, BLOCK_HALF), dtype=tl.float32)
    k2 = tl.zeros((BLOCK_KH, BLOCK_HALF), dtype=tl.float32)
    if HAS_K:
        k_in = K + b * sk_b + t * sk_t + hk[:, None] * sk_h + d[None, :]
        k1 = tl.load(k_in, mask=mk, other=0.0).to(tl.float32)
        k2 = tl.load(k_in + half, mask=mk, other=0.0).to(tl.float32)
    tl.store(k_out, (k1 * c - k2 * s).to(KO.dtype.element_ty), mask=mk)
    tl.store(k_out + half, (k2 * c + k1 * s).to(KO.dtype.element_ty), mask=mk)
    v_out = VO + pid * so_v + hk[:, None] * dim + d[None, :]
    v1 = tl.zeros((BLOCK_KH, BLOCK_HALF), dtype=VO.dtype.element_ty)
    v2 = tl.zeros((BLOCK_KH, BLOCK_HALF), dtype=VO.dtype.element_ty)
    if HAS_V:
        v_in = V + b * sv_b + t * sv_t + hk[:, None] * sv_h + d[None, :]
        v1 = tl.load(v_in, mask=mk, other=0.0).to(VO.dtype.element_ty)
        v2 = tl.load(v_in + half, mask=mk, other=0.0).to(VO.dtype.element_ty)
    tl.store(v_out, v1, mask=mk)
    tl.store(v_out + half, v2, mask=mk)


_rope_qkv = LazyKernel(_rope_qkv_kernel)


def rope_qkv_triton(q, k, v, cos, sin, outs, backward: bool = False) -> None:
    """One launch: rotate q and k (un-rotate for the backward) and copy v into outs = (qo, ko, vo),
    (B, T, H, D) tensors whose heads and head dims are contiguous within a token (any token stride: separate
    contiguous tensors in forward, head slices of one d(qkv) row in backward). q (B,T,Hq,D), k/v (B,T,Hk,D) may
    have any strides (the last dim is made contiguous); a None input writes zeros in its heads."""
    qo, ko, vo = outs
    bsz, t, n_qh, dim = qo.shape
    n_kh = ko.shape[2]
    if bsz * t == 0:
        return
    q, k, v = (None if x is None else _last_contiguous(x) for x in (q, k, v))
    cos, sin = _last_contiguous(cos), _last_contiguous(sin)
    if cos.stride() != sin.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    sc_b, sc_t = _table_strides(cos)
    strides = [x.stride()[:3] if x is not None else (0, 0, 0) for x in (q, k, v)]
    block_qh, block_kh, block_half = next_power_of_2(n_qh), next_power_of_2(n_kh), next_power_of_2(dim // 2)
    _rope_qkv[(bsz * t,)](
        qo if q is None else q, ko if k is None else k, vo if v is None else v, cos, sin, qo, ko, vo,
        t, n_qh, n_kh, dim // 2, *strides[0], *strides[1], *strides[2], sc_b, sc_t,
        qo.stride(1), ko.stride(1), vo.stride(1),
        BACKWARD=backward, HAS_Q=q is not None, HAS_K=k is not None, HAS_V=v is not None,
        BLOCK_QH=block_qh, BLOCK_KH=block_kh, BLOCK_HALF=block_half,
        num_warps=num_warps_for(2 * (block_qh + 2 * block_kh) * block_half),
    )


class RoPEQKVFunction(torch.autograd.Function):
    """Autograd wrapper of the fused split + RoPE.

    Forward returns q, k, v as three contiguous (B, T, H, D) tensors carved from one allocation: attention kernels
    (cuDNN SDPA) then take them as they are, where strided head slices of one (B, T, Hq+2Hk, D) buffer were copied
    to contiguous ones first (measured on an H100: 0.7 GB more peak memory at the seed shape). Autograd treats
    the views as outputs of this Function (they may be read, not modified in place). Only cos/sin are saved: the
    qkv input is not needed by the backward, so it is freed once its consumers are done.
    """

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_q_heads: int, n_kv_heads: int):
        q, k, v = _split_qkv(qkv, n_q_heads, n_kv_heads)
        bsz, t, _, dim = q.shape
        sizes = [bsz * t * h * dim for h in (n_q_heads, n_kv_heads, n_kv_heads)]
        flat = torch.empty(sum(sizes), dtype=qkv.dtype, device=qkv.device)
        outs = tuple(part.view(bsz, t, h, dim)
                     for part, h in zip(flat.split(sizes), (n_q_heads, n_kv_heads, n_kv_heads)))
        rope_qkv_triton(q, k, v, cos, sin, outs)
        ctx.save_for_backward(cos, sin)
        ctx.set_materialize_grads(False)  # unused outputs reach the backward as None: zeros, never allocated
        ctx.n_q_heads, ctx.qkv_shape, ctx.dim, ctx.dtype = n_q_heads, qkv.shape, dim, qkv.dtype
        return outs

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        bsz, t, width = ctx.qkv_shape
        dqkv = torch.empty((bsz, t, width // ctx.dim, ctx.dim), dtype=ctx.dtype, device=cos.device)
        n_kh = (width // ctx.dim - ctx.n_q_heads) // 2
        rope_qkv_triton(dq, dk, dv, cos, sin, _split_heads(dqkv, ctx.n_q_heads, n_kh), backward=True)
        return dqkv.view(bsz, t, width), None, None, None, None


def rope_qkv(qkv, n_q_heads: int, n_kv_heads: int, cos, sin, impl: str = "auto"):
    """Split the qkv projection output (B, T, (Hq+2Hk)*D), heads ordered [q | k | v], and rotate q and k.

    Returns q (B,T,Hq,D), k (B,T,Hk,D), v (B,T,Hk,D). cos/sin as for apply_rope: (T', D/2) with T' >= T, or
    (B or 1, T, D/2) gathered by position_ids. The Triton path returns three contiguous tensors carved from one
    new allocation (see RoPEQKVFunction).
    """
    check_float("qkv", qkv)
    if qkv.dim() != 3:
        raise ValueError(f"qkv must be (B, T, (Hq + 2*Hk) * D); got shape {tuple(qkv.shape)}")
    if n_q_heads <= 0 or n_kv_heads <= 0:
        raise ValueError(f"n_q_heads={n_q_heads} and n_kv_heads={n_kv_heads} must both be positive")
    n_heads = n_q_heads + 2 * n_kv_heads
    if qkv.shape[2] % n_heads or (qkv.shape[2] // n_heads) % 2:
        raise ValueError(
            f"qkv width {qkv.shape[2]} must be (n_q_heads + 2*n_kv_heads) * head_dim = {n_heads} * D with D even"
        )
    q, k, _ = _split_qkv(qkv, n_q_heads, n_kv_heads)
    _check_rope_args(q, k, cos, sin)
    if resolve_impl(impl, qkv.device) == "torch":
        return rope_qkv_ref(qkv, n_q_heads, n_kv_heads, cos, sin)
    if cos.dim() == 2:
        cos, sin = cos[: qkv.shape[1]], sin[: qkv.shape[1]]
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    return apply_eager(RoPEQKVFunction, qkv, cos, sin, n_q_heads, n_kv_heads)
