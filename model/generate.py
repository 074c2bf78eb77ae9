"""Autoregressive generation for Z2allForCausalLM with a preallocated KV cache (shape legend: modeling.py)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


class KVCache:
    """Per-layer keys/values (B, Lmax, Hk, D) filled left to right; `length` (a host int) is P."""

    def __init__(self, n_layers: int, batch: int, max_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, max_len, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store k/v (B,T,Hk,D) at P..P+T-1, then causal attention of q (B,T,Hq,D) over all L = P+T keys.

        1. Write the new keys/values into the cache slots after the P cached ones.
        2. Query i (absolute position P+i) may see key j iff j <= P+i: a (T, L) boolean mask.
        3. SDPA on (B, H, T, D) layout, kv heads repeated Hq/Hk times (query head h reads kv head h // rep).
        """
        P, T = self.length, q.shape[1]
        if P + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens, {P} used, {T} more requested")
        self.k[layer_idx][:, P:P + T] = k
        self.v[layer_idx][:, P:P + T] = v
        keys, values = self.k[layer_idx][:, :P + T], self.v[layer_idx][:, :P + T]
        rep = q.shape[2] // k.shape[2]
        qh = q.transpose(1, 2)
        kh = keys.transpose(1, 2).repeat_interleave(rep, dim=1)
        vh = values.transpose(1, 2).repeat_interleave(rep, dim=1)
        pos_q = torch.arange(P, P + T, device=q.device)[:, None]
        mask = torch.arange(P + T, device=q.device)[None, :] <= pos_q
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask).transpose(1, 2)

    def advance(self, T: int) -> None:
        self.length += T


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next ids (B,) from logits (B, V): argmax when temperature == 0, else top-k, then top-p, then sample."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already exceeds top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_args(max_new_tokens, temperature, top_k, top_p) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, eos_id: int | None = None, use_cache: bool = True,
             generator: torch.Generator | None = None,
             on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Prompt (B, T0) (or a list of ids) + up to max_new_tokens → (B, T0 + n) ids.

    1. Prefill: one forward over the prompt (filling the KV cache when use_cache), logits of the last token.
    2. Each step samples one id per row; a row that has produced eos_id keeps emitting eos_id. on_token, when
       given, receives the step's ids (B,) as they are sampled (streaming output).
    3. Stop after max_new_tokens, or once every row has produced eos_id (one host sync per step).
    4. The next step feeds only the new token (cache) or the whole sequence again (no cache).
    """
    _check_args(max_new_tokens, temperature, top_k, top_p)
    device = next(model.parameters()).device
    ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    c = model.config
    total = ids.shape[1] + max_new_tokens
    if c.rope_scaling_type == "none" and total > c.max_seq_len:
        raise ValueError(f"prompt {ids.shape[1]} + max_new_tokens {max_new_tokens} = {total} > max_seq_len="
                         f"{c.max_seq_len}; generate fewer tokens or set --rope_scaling_type=linear|dynamic")
    was_training = model.training
    model.eval()
    cache = None
    if use_cache:
        dtype = model.embed_tokens.weight.dtype
        cache = KVCache(c.n_layers, ids.shape[0], total, c.n_kv_heads, c.head_dim, dtype, device)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    step_input = ids
    try:
        for _ in range(max_new_tokens):
            hidden = model.hidden_states(step_input, kv_cache=cache)
            logits = model.lm_head(hidden[:, -1])
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_id), nxt)
                finished |= nxt == eos_id
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if on_token is not None:
                on_token(nxt)
            if eos_id is not None and bool(finished.all()):
                break
            step_input = nxt[:, None] if use_cache else ids
    finally:
        model.train(was_training)
    return ids
