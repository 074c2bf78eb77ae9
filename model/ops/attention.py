"""Attention: SDPA by default, flash-attn when installed, and a per-document mask for packed rows.

attention(q (B,T,Hq,D), k (B,T,Hk,D), v (B,T,Hk,D), causal, cu_seqlens, max_seqlen, dropout_p, impl,
sdpa_backend) -> (B,T,Hq,D). Hq must be a multiple of Hk (GQA; MQA when Hk = 1).

impl:
- "auto": flash-attn (`flash_attn_func`, or `flash_attn_varlen_func` for packed rows) when it is importable, the
  tensors are on CUDA and in fp16/bf16; otherwise "sdpa".
- "sdpa": torch scaled_dot_product_attention; GQA through enable_gqa (k/v repeated where unsupported);
  `sdpa_backend` pins a backend with torch.nn.attention.sdpa_kernel. Packed rows get a block-diagonal causal
  boolean mask per row (B, 1, T, T).
- "flash_attn": flash-attn, an error if it is missing.
- "torch": the plain matmul/softmax reference (`attention_ref`), handy for tests.

Packing (cu_seqlens, int32 (n_docs+1,) offsets over the flattened B*T tokens): tokens attend only within their
document. The masked torch paths apply the mask row by row, so a row end also ends a document there (the packer
never lets a document run over a row). flash-attn varlen takes cu_seqlens as they are.
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import torch
import torch.nn.functional as F

ATTN_IMPLS = ("auto", "sdpa", "flash_attn", "torch")
SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")


@functools.lru_cache(maxsize=None)
def flash_attn_available() -> bool:
    """True when flash_attn (with flash_attn_func and flash_attn_varlen_func) imports cleanly."""
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func  # noqa: F401
    except Exception:  # a broken CUDA build raises more than ImportError; treat it as absent
        return False
    return True


@functools.lru_cache(maxsize=None)
def _sdpa_supports_gqa() -> bool:
    """True when F.scaled_dot_product_attention takes enable_gqa (torch >= 2.5).

    The version decides, not inspect.signature: SDPA is a builtin without a Python signature, and a signature
    probe silently answered False, which sent every GQA call through repeat_interleave copies of k and v
    (4.6 ms/step of copies and 2.0 ms of backward sums on the 1.25B shape, where cuDNN does GQA natively).
    """
    return torch.__version__ >= (2, 5)


def _sdpa_context(backend: str):
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}
    return sdpa_kernel(getattr(SDPBackend, names[backend]))


def document_mask(bsz: int, seq_len: int, cu_seqlens: torch.Tensor, causal: bool, device) -> torch.Tensor:
    """(B, 1, T, T) bool, True where attention is allowed: same document (and key <= query when causal).

    1. doc id of each flattened token = number of offsets <= its index, minus one;
    2. compare doc ids within each row; 3. intersect with the causal triangle.
    """
    flat = torch.arange(bsz * seq_len, device=device, dtype=cu_seqlens.dtype)
    doc = (torch.searchsorted(cu_seqlens.to(device), flat, right=True) - 1).view(bsz, seq_len)
    allowed = doc[:, :, None] == doc[:, None, :]
    if causal:
        allowed &= torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    return allowed[:, None]


def attention_ref(q, k, v, causal: bool = True, cu_seqlens=None, dropout_p: float = 0.0) -> torch.Tensor:
    """Plain PyTorch attention: fp32 softmax(q k^T / sqrt(D)) v with k/v heads repeated for GQA."""
    bsz, t, n_qh, dim = q.shape
    groups = n_qh // k.shape[2]
    qt = q.transpose(1, 2).float()
    kt = k.transpose(1, 2).float().repeat_interleave(groups, dim=1)
    vt = v.transpose(1, 2).float().repeat_interleave(groups, dim=1)
    scores = qt @ kt.transpose(-1, -2) / dim**0.5
    if cu_seqlens is not None:
        scores = scores.masked_fill(~document_mask(bsz, t, cu_seqlens, causal, q.device), float("-inf"))
    elif causal:
        tri = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~tri, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return (probs @ vt).transpose(1, 2).to(q.dtype)


def _sdpa(q, k, v, causal, cu_seqlens, dropout_p, backend) -> torch.Tensor:
    bsz, t, n_qh, _ = q.shape
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    kwargs = {"dropout_p": dropout_p}
    if cu_seqlens is not None:
        kwargs["attn_mask"] = document_mask(bsz, t, cu_seqlens, causal, q.device)
    else:
        kwargs["is_causal"] = causal
    groups = n_qh // k.shape[2]
    with _sdpa_context(backend):
        if groups > 1 and _sdpa_supports_gqa():
            try:
                return F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True, **kwargs).transpose(1, 2)
            except RuntimeError:
                if backend == "auto":
                    raise
                # the pinned backend lacks GQA: fall through to repeated k/v
        if groups > 1:
            kt, vt = kt.repeat_interleave(groups, dim=1), vt.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(qt, kt, vt, **kwargs).transpose(1, 2)


def _flash(q, k, v, causal, cu_seqlens, max_seqlen, dropout_p) -> torch.Tensor:
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    if cu_seqlens is None:
        return flash_attn_func(q, k, v, dropout_p=dropout_p, causal=causal)
    bsz, t, n_qh, dim = q.shape
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    if max_seqlen is None:  # host sync; callers on the hot path pass max_seqlen
        max_seqlen = int((cu[1:] - cu[:-1]).max().item())
    out = flash_attn_varlen_func(
        q.reshape(bsz * t, n_qh, dim), k.reshape(bsz * t, k.shape[2], dim), v.reshape(bsz * t, v.shape[2], dim),
        cu, cu, max_seqlen, max_seqlen, dropout_p=dropout_p, causal=causal,
    )
    return out.view(bsz, t, n_qh, dim)


def _check_attention_args(q, k, v, cu_seqlens, impl, sdpa_backend) -> None:
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attention impl={impl!r} is not one of {ATTN_IMPLS}; fix --attn_impl")
    if sdpa_backend not in SDPA_BACKENDS:
        raise ValueError(f"sdpa_backend={sdpa_backend!r} is not one of {SDPA_BACKENDS}; fix --sdpa_backend")
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"q must be (B,T,Hq,D), k and v (B,T,Hk,D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[0] != q.shape[0] or k.shape[1] != q.shape[1] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k/v {tuple(k.shape)} must share B, T and D with q {tuple(q.shape)}")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads {q.shape[2]} must be a multiple of key/value heads {k.shape[2]}")
    if cu_seqlens is not None and (cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"cu_seqlens must be a 1-D int32 tensor of offsets; got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    dropout_p: float = 0.0,
    impl: str = "auto",
    sdpa_backend: str = "auto",
) -> torch.Tensor:
    """Multi-head attention with GQA and optional packing; returns (B, T, Hq, D) in q.dtype."""
    _check_attention_args(q, k, v, cu_seqlens, impl, sdpa_backend)
    flash_ok = flash_attn_available() and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if impl == "flash_attn" and not flash_ok:
        raise RuntimeError(
            "attn_impl='flash_attn' needs the flash_attn package, CUDA tensors and fp16/bf16; "
            f"(installed: {flash_attn_available()}, device: {q.device}, dtype: {q.dtype}); use --attn_impl=auto or sdpa"
        )
    if impl == "flash_attn" or (impl == "auto" and flash_ok):
        return _flash(q, k, v, causal, cu_seqlens, max_seqlen, dropout_p)
    if impl == "torch":
        return attention_ref(q, k, v, causal, cu_seqlens, dropout_p)
    return _sdpa(q, k, v, causal, cu_seqlens, dropout_p, sdpa_backend)
