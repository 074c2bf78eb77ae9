"""Plain-torch stand-ins for model.ops functions that have not landed yet (installed only where missing)."""
import math

import torch
import torch.nn.functional as F

import model.ops as ops


def _resolve_impl(flag, device):
    return "triton" if flag == "triton" or (flag == "auto" and torch.device(device).type == "cuda") else "torch"


def _rms_norm(x, weight, eps, impl="auto"):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def _add_rms_norm(x, residual, weight, eps, impl="auto", residual_in_fp32=True):
    new = x.float() if residual is None else residual.float() + x.float()
    new = new if residual_in_fp32 else new.to(x.dtype)
    return _rms_norm(new, weight, eps).to(x.dtype), new


def _rope_cache(seq_len, head_dim, theta, scaling_type="none", scaling_factor=1.0, device=None,
                original_max_seq_len=None):
    if scaling_type == "dynamic" and original_max_seq_len and seq_len > original_max_seq_len:
        theta = theta * ((scaling_factor * seq_len / original_max_seq_len) - (scaling_factor - 1)) ** (
            head_dim / (head_dim - 2))
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    if scaling_type == "linear":
        t = t / scaling_factor
    f = torch.outer(t, inv)
    return f.cos(), f.sin()


def _rot(x, cos, sin):
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h].float(), x[..., h:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


def _apply_rope(q, k, cos, sin, impl="auto"):
    return _rot(q, cos, sin), _rot(k, cos, sin)


def _swiglu(gate_up, impl="auto"):
    g, u = gate_up.chunk(2, dim=-1)
    return F.silu(g) * u


def _flce(hidden, weight, targets, bias=None, ignore_index=-100, reduction="mean", chunk_size=4096, impl="auto"):
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)


def _attention(q, k, v, causal=True, cu_seqlens=None, max_seqlen=None, dropout_p=0.0, impl="auto",
               sdpa_backend="auto"):
    B, T, Hq, D = q.shape
    rep = Hq // k.shape[2]
    kk, vv = (t.repeat_interleave(rep, dim=2).transpose(1, 2) for t in (k, v))
    qq = q.transpose(1, 2)
    if cu_seqlens is None:
        return F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal, dropout_p=dropout_p).transpose(1, 2)
    idx = torch.arange(B * T)
    doc = (torch.searchsorted(cu_seqlens, idx.to(cu_seqlens.dtype), right=True) - 1).view(B, T)
    mask = (doc[:, :, None] == doc[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    return F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask[:, None], dropout_p=dropout_p).transpose(1, 2)


_STANDINS = {"resolve_impl": _resolve_impl, "rms_norm": _rms_norm, "add_rms_norm": _add_rms_norm,
             "rope_cache": _rope_cache, "apply_rope": _apply_rope, "swiglu": _swiglu,
             "fused_linear_cross_entropy": _flce, "attention": _attention}
for _name, _fn in _STANDINS.items():
    if not hasattr(ops, _name):
        setattr(ops, _name, _fn)
