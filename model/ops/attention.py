"""Attention: SDPA by default, flash-attn when installed, and a per-document mask for packed rows.

attention(q (B,T,Hq,D), k (B,T,Hk,D), v (B,T,Hk,D), causal, cu_seqlens, max_seqlen, dropout_p, impl,
sdpa_backend, packed) -> (B,T,Hq,D). Hq must be a multiple of Hk (GQA; MQA when Hk = 1).

impl:
- "auto": flash-attn (`flash_attn_func`, or `flash_attn_varlen_func` for packed rows) when it is importable, the
  tensors are on CUDA and in fp16/bf16; else, for packed rows on CUDA without dropout, "flex"; otherwise "sdpa".
- "sdpa": torch scaled_dot_product_attention; GQA through enable_gqa (k/v repeated where unsupported);
  `sdpa_backend` pins a backend with torch.nn.attention.sdpa_kernel. Packed rows get a block-diagonal causal
  boolean mask per row (B, 1, T, T), which the fused SDPA kernels apply to every one of the T x T scores.
- "flex": torch's FlexAttention (compiled Triton kernels, CUDA only: it has no backward on the CPU) with a
  block mask of the documents, so tiles that cross a document are skipped, not computed and masked: packed
  rows cost what their documents cost (on an H200 at the 1.25B shape, the dense mask made packed rows of 2048
  22% slower per token than padded rows, bench/RESULTS.md). No dropout.
- "flash_attn": flash-attn, an error if it is missing.
- "torch": the plain matmul/softmax reference (`attention_ref`), handy for tests.

Packing (cu_seqlens, int32 (n_docs+1,) offsets over the flattened B*T tokens): tokens attend only within their
document. The masked paths apply the mask row by row, so a row end also ends a document there (the packer never
lets a document run over a row). flash-attn varlen takes cu_seqlens as they are. A model builds one PackedDocs
per forward (`packed_docs`) and passes it to every layer, so the mask is built once, not once per layer.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ATTN_IMPLS = ("auto", "sdpa", "flash_attn", "flex", "torch")
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


@functools.lru_cache(maxsize=None)
def flex_attention_available() -> bool:
    """True when torch has FlexAttention (torch >= 2.5) and Triton imports (its kernels are Triton)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
        import triton  # noqa: F401
    except Exception:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    """flex_attention compiled once per process: run eagerly it materialises the T x T scores."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


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
    doc = document_ids(bsz, seq_len, cu_seqlens, device)
    allowed = doc[:, :, None] == doc[:, None, :]
    if causal:
        allowed &= torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
    return allowed[:, None]


def document_ids(bsz: int, seq_len: int, cu_seqlens: torch.Tensor, device) -> torch.Tensor:
    """(B, T) int: the document of each token, the number of offsets <= its flattened index, minus one."""
    flat = torch.arange(bsz * seq_len, device=device, dtype=cu_seqlens.dtype)
    return (torch.searchsorted(cu_seqlens.to(device), flat, right=True) - 1).view(bsz, seq_len)


FLEX_TILE = 128  # FlexAttention's default tile, in tokens, along queries and keys


def _tile_masks(doc: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n, n) bool masks of the (query tile, key tile) pairs that are partly and wholly attended.

    Documents are contiguous and their ids rise along a row, so a tile holds the ids first..last of its first
    and last tokens, and two tiles share a document iff those ranges overlap:
    1. first/last doc id of each tile; 2. any = the ranges overlap (and key tile <= query tile when causal);
    3. full = both tiles inside one and the same document (and key tile < query tile when causal), neither
       being a short last tile;
    4. partial = any and not full (the mask_mod is evaluated there, token by token).
    """
    t = doc.shape[1]
    starts = torch.arange(0, t, FLEX_TILE, device=doc.device)
    ends = (starts + FLEX_TILE).clamp(max=t) - 1
    first, last = doc[:, starts], doc[:, ends]
    q0, q1, k0, k1 = first[:, :, None], last[:, :, None], first[:, None, :], last[:, None, :]
    attended = (q0 <= k1) & (k0 <= q1)
    full = (q0 == q1) & (k0 == k1) & (q0 == k0)
    if causal:
        tiles = torch.arange(len(starts), device=doc.device)
        attended &= tiles[None, :] <= tiles[:, None]
        full &= tiles[None, :] < tiles[:, None]
    if t % FLEX_TILE:  # a short last tile stays partial (its missing tokens are masked out), as torch does it
        full[:, -1, :] = False
        full[:, :, -1] = False
    return attended & ~full, full


def _kv_blocks(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockMask's (B,1,n) counts and (B,1,n,n) key-tile indices (the masked-in tiles first, ascending)."""
    order = torch.argsort(mask.to(torch.int8), dim=-1, descending=True, stable=True)
    return mask.sum(-1, dtype=torch.int32)[:, None], order.to(torch.int32)[:, None]


@torch.compiler.disable  # built eagerly, once per forward, outside any compiled graph
def flex_block_mask(bsz: int, seq_len: int, cu_seqlens: torch.Tensor | None, causal: bool, device):
    """A FlexAttention BlockMask (128 x 128 tiles) of the documents (and the causal triangle when causal).

    The tiles are classified from the documents' ids at tile edges (_tile_masks) on (B, T/128, T/128) tensors:
    torch's create_block_mask evaluates the mask at all B*T*T token pairs instead (4.9 ms at B=8, T=2048 on an
    H200, against 1.75 ms for the attention itself). The mask_mod decides the partial tiles token by token.
    """
    from torch.nn.attention.flex_attention import BlockMask

    if cu_seqlens is None:
        doc = torch.zeros(bsz, seq_len, dtype=torch.int32, device=device)
    else:
        doc = document_ids(bsz, seq_len, cu_seqlens, device)

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = doc[b, q_idx] == doc[b, kv_idx]
        return allowed & (q_idx >= kv_idx) if causal else allowed

    partial, full = _tile_masks(doc, causal)
    return BlockMask.from_kv_blocks(*_kv_blocks(partial), *_kv_blocks(full), BLOCK_SIZE=FLEX_TILE, mask_mod=mask_mod,
                                    seq_lengths=(seq_len, seq_len))


@dataclass(frozen=True)
class PackedDocs:
    """The documents of packed rows, and the masks that the attention paths build from them, once each.

    A model makes one per forward (packed_docs) and hands it to every layer: the (B,1,T,T) dense mask or
    the flex block mask is built on the first layer's call and reused by the others. Do not keep one across
    forwards: the masks belong to this micro-batch's cu_seqlens.
    """

    bsz: int
    seq_len: int
    cu_seqlens: torch.Tensor
    max_seqlen: int | None
    masks: dict = field(default_factory=dict, repr=False, compare=False)

    def dense_mask(self, causal: bool, device) -> torch.Tensor:
        return self._built(document_mask, causal, device)

    def block_mask(self, causal: bool, device):
        return self._built(flex_block_mask, causal, device)

    def _built(self, build, causal: bool, device):
        key = (build.__name__, causal, str(device))
        if key not in self.masks:
            self.masks[key] = build(self.bsz, self.seq_len, self.cu_seqlens, causal, device)
        return self.masks[key]


def packed_docs(bsz: int, seq_len: int, cu_seqlens: torch.Tensor | None, max_seqlen: int | None = None):
    """A PackedDocs for B rows of T tokens, or None when the rows are not packed (cu_seqlens None)."""
    return None if cu_seqlens is None else PackedDocs(bsz, seq_len, cu_seqlens, max_seqlen)


def attention_ref(q, k, v, causal: bool = True, cu_seqlens=None, dropout_p: float = 0.0,
                  packed: PackedDocs | None = None) -> torch.Tensor:
    """Plain PyTorch attention: fp32 softmax(q k^T / sqrt(D)) v with k/v heads repeated for GQA."""
    bsz, t, n_qh, dim = q.shape
    groups = n_qh // k.shape[2]
    qt = q.transpose(1, 2).float()
    kt = k.transpose(1, 2).float().repeat_interleave(groups, dim=1)
    vt = v.transpose(1, 2).float().repeat_interleave(groups, dim=1)
    scores = qt @ kt.transpose(-1, -2) / dim**0.5
    packed = packed if packed is not None else packed_docs(bsz, t, cu_seqlens)
    if packed is not None:
        scores = scores.masked_fill(~packed.dense_mask(causal, q.device), float("-inf"))
    elif causal:
        tri = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~tri, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    return (probs @ vt).transpose(1, 2).to(q.dtype)


def _sdpa(q, k, v, causal, packed, dropout_p, backend) -> torch.Tensor:
    n_qh = q.shape[2]
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    kwargs = {"dropout_p": dropout_p}
    if packed is not None:
        kwargs["attn_mask"] = packed.dense_mask(causal, q.device)
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


@functools.lru_cache(maxsize=16)
def _plain_block_mask(bsz: int, seq_len: int, causal: bool, device: torch.device):
    """The block mask of unpacked rows: it depends on the shape only, so every layer and step reuses it."""
    return flex_block_mask(bsz, seq_len, None, causal, device)


def _flex(q, k, v, causal, packed) -> torch.Tensor:
    bsz, t = q.shape[:2]
    block_mask = _plain_block_mask(bsz, t, causal, q.device) if packed is None else packed.block_mask(causal, q.device)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    # FORCE_USE_FLEX_ATTENTION: without grad and with short rows, inductor picks its decoding kernel, which
    # has no valid config for some shapes (head dim 16 with GQA: NoValidChoicesError in eval on torch 2.11)
    out = _compiled_flex()(qt, kt, vt, block_mask=block_mask, enable_gqa=q.shape[2] != k.shape[2],
                           kernel_options={"FORCE_USE_FLEX_ATTENTION": True})
    return out.transpose(1, 2)


def _flash(q, k, v, causal, packed, dropout_p) -> torch.Tensor:
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    if packed is None:
        return flash_attn_func(q, k, v, dropout_p=dropout_p, causal=causal)
    bsz, t, n_qh, dim = q.shape
    cu, max_seqlen = packed.cu_seqlens.to(device=q.device, dtype=torch.int32), packed.max_seqlen
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


def resolve_attention_impl(impl: str, q: torch.Tensor, packed: bool, dropout_p: float) -> str:
    """The path that `impl` takes for q: "flash_attn", "flex", "sdpa" or "torch" (errors for impossible picks)."""
    flash_ok = flash_attn_available() and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if impl == "flash_attn" and not flash_ok:
        raise RuntimeError(
            "attn_impl='flash_attn' needs the flash_attn package, CUDA tensors and fp16/bf16; "
            f"(installed: {flash_attn_available()}, device: {q.device}, dtype: {q.dtype}); use --attn_impl=auto or sdpa"
        )
    flex_ok = flex_attention_available() and q.is_cuda
    if impl == "flex" and not (flex_ok and dropout_p == 0):
        raise RuntimeError(
            "attn_impl='flex' needs CUDA tensors, torch >= 2.5 with Triton and attention_dropout=0 (FlexAttention "
            f"has no CPU backward and no dropout); got device {q.device}, available: {flex_attention_available()}, "
            f"dropout {dropout_p}; use --attn_impl=auto or sdpa"
        )
    if impl == "auto":
        if flash_ok:
            return "flash_attn"
        return "flex" if packed and flex_ok and dropout_p == 0 else "sdpa"
    return impl


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
    packed: PackedDocs | None = None,
) -> torch.Tensor:
    """Multi-head attention with GQA and optional packing; returns (B, T, Hq, D) in q.dtype.

    Packed rows come as cu_seqlens (and max_seqlen), or as a PackedDocs that carries them and the masks
    already built for them (a model's layers share one); not both.
    """
    if packed is not None and cu_seqlens is not None:
        raise ValueError("pass cu_seqlens or packed (a PackedDocs holding them), not both")
    _check_attention_args(q, k, v, cu_seqlens if packed is None else packed.cu_seqlens, impl, sdpa_backend)
    if packed is None:
        packed = packed_docs(q.shape[0], q.shape[1], cu_seqlens, max_seqlen)
    path = resolve_attention_impl(impl, q, packed is not None, dropout_p)
    if path == "flash_attn":
        return _flash(q, k, v, causal, packed, dropout_p)
    if path == "flex":
        return _flex(q, k, v, causal, packed)
    if path == "torch":
        return attention_ref(q, k, v, causal, dropout_p=dropout_p, packed=packed)
    return _sdpa(q, k, v, causal, packed, dropout_p, sdpa_backend)
