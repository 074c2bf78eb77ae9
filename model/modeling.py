"""Z2all: a Llama2-style decoder built from the fused ops in model/ops.

Shape legend (used in the comments of this file and of model/generate.py):
    B   batch (rows)                      T   tokens per row in this call
    P   tokens already in the KV cache    L   P + T, keys visible to the last query
    N   B * T, tokens flattened            d   hidden_dim
    Hq  n_heads (query heads)             Hk  n_kv_heads (key/value heads; Hq % Hk == 0)
    D   head_dim = d // Hq                I   intermediate_size (SwiGLU width)
    V   vocab_size

Parameter layout (the state dict keys of the contract):
    qkv_proj.weight (Hq*D + 2*Hk*D, d): rows [q heads | k heads | v heads], each head D rows, so the
    Hugging Face q_proj/k_proj/v_proj weights are plain row slices (GQA: query head h reads kv head
    h // (Hq // Hk), the repeat_interleave order of HF and of SDPA's enable_gqa).
    gate_up_proj.weight (2I, d): rows [gate | up].
RoPE is rotate-half (x1 = x[..., :D/2], x2 = x[..., D/2:]), the same as HF Llama, so no permutation of
q/k rows is needed on import or export.

The residual stream: each block does `normed, residual = add_rms_norm(h, residual)` (residual kept in fp32
when residual_in_fp32), then the sublayer on `normed`; the final norm adds the last sublayer output.

FP8 (config.fp8 != "off", in training mode only: eval and generation run the bf16 weights as they are): the
qkv, o, gate_up and down projections run their GEMMs through model/ops/fp8_linear.py; the block's two norms and
the SwiGLU emit their outputs already quantized (ops.Fp8Input) instead of in bf16; the weights' FP8 copies live
in one Fp8WeightCache, made again at their first use after the weights changed (new_weight_step).
"""
from __future__ import annotations

import dataclasses

import math
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import model.ops as ops
from model.config import Z2allConfig
from model.ops.fp8_linear import Fp8WeightCache
from model.ops.rope import rope_qkv
from model.weights import read_pretrained, save_pretrained



class Z2allOutput(NamedTuple):
    loss: torch.Tensor | None
    logits: torch.Tensor | None


# ---------------------------------------------------------------------------------------------
# modules


class Z2allRMSNorm(nn.Module):
    """RMSNorm fused with the residual add before it (one kernel, ops.add_rms_norm):
    forward(h, residual) = (rmsnorm(residual + dropout(h)) * weight, residual + dropout(h)); with residual None, h
    is the stream itself (the embeddings: no dropout). The new residual is fp32 with residual_in_fp32. With fp8_out
    (the blocks' norms under --fp8) the normed output comes in training as an ops.Fp8Input for an FP8 projection."""

    def __init__(self, dim: int, eps: float, impl: str = "auto", dropout: float = 0.0, residual_in_fp32: bool = True,
                 fp8_out: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.impl, self.dropout, self.residual_in_fp32 = eps, impl, dropout, residual_in_fp32
        self.fp8_out = fp8_out

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dropout > 0.0 and residual is not None:
            h = F.dropout(h, self.dropout, self.training)
        # with FP8 in training the normed output only feeds an FP8 projection (qkv, gate_up): emit that form only
        return ops.add_rms_norm(h, residual, self.weight, self.eps, impl=ops.resolve_impl(self.impl, h.device),
                                residual_in_fp32=self.residual_in_fp32, fp8_out=self.fp8_out and self.training)


def _norm(cfg: Z2allConfig, fp8_out: bool = False) -> Z2allRMSNorm:
    return Z2allRMSNorm(cfg.hidden_dim, cfg.rms_norm_eps, cfg.use_fused_rmsnorm, cfg.residual_dropout,
                        cfg.residual_in_fp32, fp8_out)


class Z2allLinear(nn.Linear):
    """nn.Linear (same parameters and state dict keys) whose weight gradient can go to a grad sink.

    `grad_sink` is set by Z2allForCausalLM.set_weight_grad_sink (the DDP does it when it wraps the model): the
    weight-grad GEMM then accumulates straight into the DDP's main_grad (model/ops/linear.py).
    `fp8_weights` is the model's Fp8WeightCache when config.fp8 is on: in training mode the layer then runs
    fp8_linear (its input a tensor or an ops.Fp8Input from a fused norm or SwiGLU).
    """

    grad_sink = None
    fp8_weights: Fp8WeightCache | None = None

    def fp8_weight(self):
        """This layer's FP8 copies when it runs in FP8 now (FP8 on and training mode), else None."""
        if self.fp8_weights is None or not self.training:
            return None
        return self.fp8_weights.get(self.weight)

    def forward(self, x):
        w8 = self.fp8_weight()
        if w8 is not None:
            return ops.fp8_linear(x, self.weight, self.bias, w8, self.grad_sink)
        assert not isinstance(x, ops.Fp8Input), "an FP8 input reached a bf16 layer: the block and the layer disagree"
        return ops.linear(x, self.weight, self.bias, self.grad_sink)


class Z2allAttention(nn.Module):
    def __init__(self, cfg: Z2allConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.qkv_proj = Z2allLinear(cfg.hidden_dim, qkv_out, bias=cfg.attention_bias)
        self.o_proj = Z2allLinear(cfg.n_heads * cfg.head_dim, cfg.hidden_dim, bias=False)
        self.dropout_p = cfg.attention_dropout
        self.attn_impl, self.sdpa_backend = cfg.attn_impl, cfg.sdpa_backend
        self.rope_flag = cfg.use_fused_rope

    def forward(self, x, cos, sin, packed, kv_cache=None, layer_idx=0):
        """packed: the micro-batch's ops.PackedDocs (one per forward, shared by the layers), or None."""
        B, T, _ = x.shape
        # fused split + RoPE: q, k, v are views of one new buffer (the projection output is freed) and the
        # backward writes d(qkv) in one launch (no concatenation of dq, dk, dv)
        q, k, v = rope_qkv(self.qkv_proj(x), self.n_heads, self.n_kv_heads, cos, sin,
                           impl=ops.resolve_impl(self.rope_flag, x.device))
        if kv_cache is not None:
            out = kv_cache.attend(layer_idx, q, k, v)
        else:
            out = ops.attention(q, k, v, causal=True, packed=packed,
                                dropout_p=self.dropout_p if self.training else 0.0,
                                impl=self.attn_impl, sdpa_backend=self.sdpa_backend)
        return self.o_proj(out.reshape(B, T, self.n_heads * self.head_dim))


class SwiGLUDownProj(Z2allLinear):
    """The MLP's down projection, called on the fused gate_up (..., 2I): swiglu(gate_up) @ weight.T.

    It takes gate_up rather than the SwiGLU output so that, with recompute (activation_checkpointing=
    selective), the (..., I) SwiGLU output is never stored for backward but rebuilt from gate_up there
    (ops.swiglu_down). It stays a module call with the usual weight so forward pre-hooks on it (ZeRO-1's
    overlapped param gather waits there) and the state dict key down_proj.weight are unchanged.
    """

    def __init__(self, intermediate_size: int, hidden_dim: int, impl: str = "auto", recompute: bool = False):
        super().__init__(intermediate_size, hidden_dim, bias=False)
        self.impl, self.recompute = impl, recompute

    def forward(self, gate_up):
        return ops.swiglu_down(gate_up, self.weight, impl=ops.resolve_impl(self.impl, gate_up.device),
                               recompute=self.recompute, sink=self.grad_sink, w8=self.fp8_weight())


class Z2allMLP(nn.Module):
    def __init__(self, cfg: Z2allConfig):
        super().__init__()
        self.gate_up_proj = Z2allLinear(cfg.hidden_dim, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = SwiGLUDownProj(cfg.intermediate_size, cfg.hidden_dim, cfg.use_fused_swiglu,
                                        recompute=cfg.activation_checkpointing == "selective")

    def forward(self, x):
        return self.down_proj(self.gate_up_proj(x))


class Z2allLMHead(nn.Linear):
    """The output projection (an nn.Linear: same parameter and state dict key), and the loss taken through it.

    Called with targets it returns the fused linear cross-entropy, which never materialises the (N, V) logits;
    without, the logits. The loss goes through this module's call rather than reading `lm_head.weight` from the
    model's forward because ZeRO-1's overlapped param gather waits for a module's weights in that module's forward
    pre-hook: a bare weight read skips the wait and, on another rank's shard, uses the weights before the gather
    landed (tests/unit/model/test_param_reads.py holds every parameter of the model to this).
    """

    def __init__(self, hidden_dim: int, vocab_size: int, chunk_size: int, impl: str = "auto"):
        super().__init__(hidden_dim, vocab_size, bias=False)
        self.chunk_size, self.impl = chunk_size, impl

    def forward(self, hidden, targets=None, reduction: str = "mean"):
        """hidden (..., d) -> logits (..., V); with targets (...): the loss (reduction "mean", "sum", or "none":
        the fp32 loss of each position, 0 where ignored, shaped like targets)."""
        if targets is None:
            return F.linear(hidden, self.weight)
        rows, flat = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        if reduction == "none":
            return ops.linear_cross_entropy_per_token(rows, self.weight, flat, ignore_index=-100,
                                                      chunk_size=self.chunk_size).view(targets.shape)
        return ops.fused_linear_cross_entropy(rows, self.weight, flat, ignore_index=-100, reduction=reduction,
                                              chunk_size=self.chunk_size,
                                              impl=ops.resolve_impl(self.impl, hidden.device))


class Z2allBlock(nn.Module):
    def __init__(self, cfg: Z2allConfig):
        super().__init__()
        fp8 = cfg.fp8 != "off"
        self.attn_norm = _norm(cfg, fp8_out=fp8)
        self.attn = Z2allAttention(cfg)
        self.mlp_norm = _norm(cfg, fp8_out=fp8)
        self.mlp = Z2allMLP(cfg)

    def forward(self, hidden, residual, cos, sin, packed, kv_cache=None, layer_idx=0):
        """hidden (B,T,d): the previous sublayer's output, not yet added; residual (B,T,d) or None."""
        normed, residual = self.attn_norm(hidden, residual)
        hidden = self.attn(normed, cos, sin, packed, kv_cache, layer_idx)
        normed, residual = self.mlp_norm(hidden, residual)
        return self.mlp(normed), residual


# ---------------------------------------------------------------------------------------------
# the model


class Z2allForCausalLM(nn.Module):
    def __init__(self, config: Z2allConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_dim)
        self.layers = nn.ModuleList(Z2allBlock(config) for _ in range(config.n_layers))
        self.norm = _norm(config)
        self.lm_head = Z2allLMHead(config.hidden_dim, config.vocab_size, config.cross_entropy_chunk_size,
                                   config.use_fused_cross_entropy)
        self._rope_tables: dict = {}
        self.fp8_weights = Fp8WeightCache() if config.fp8 != "off" else None
        for module in self.layers.modules():
            if isinstance(module, Z2allLinear):
                module.fp8_weights = self.fp8_weights
        self._tie()
        self.reset_parameters()
        self.register_state_dict_post_hook(_drop_tied_head)
        self.register_load_state_dict_pre_hook(_fill_tied_head)

    def _tie(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, initializer_range) for matrices; o_proj/down_proj scaled by 1/sqrt(2·n_layers)."""
        std = self.config.initializer_range
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scaled = name.endswith("o_proj") or name.endswith("down_proj")
                nn.init.normal_(module.weight, mean=0.0, std=out_std if scaled else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, Z2allRMSNorm):
                nn.init.ones_(module.weight)

    def set_weight_grad_sink(self, sink) -> int:
        """Route the weight grads of the decoder's linear layers (qkv, o, gate_up, down) to `sink`; None undoes it.

        The sink follows the protocol of model/ops/linear.py (accumulate_wgrad). The embedding and the LM head
        keep autograd's grads: the head's grad is built by the fused cross-entropy, and a tied head shares
        its weight with the embedding, whose two contributions autograd must sum first. Returns how many
        weights were routed.
        """
        routed = 0
        for module in self.layers.modules():
            if isinstance(module, Z2allLinear):
                module.grad_sink = sink
                routed += 1
        return routed

    def new_weight_step(self) -> None:
        """The weights may have changed since the last forward (the optimizer, ZeRO-1's gather, a checkpoint load),
        so the FP8 copies are made again at their next use. The DDP calls it (weights_changed: after each optimizer
        step and when a step begins); a no-op without FP8."""
        if self.fp8_weights is not None:
            self.fp8_weights.new_step()

    def _apply(self, fn, recurse=True):
        # .to()/.cuda()/.half() re-point the weights: copies of the old ones would only hold memory
        if self.fp8_weights is not None:
            self.fp8_weights.clear()
        return super()._apply(fn, recurse)

    # -- sizes ---------------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = True) -> int:
        """Unique parameters; non_embedding drops the input embedding but keeps the LM head (tied or not)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed_tokens.weight.numel()
            if self.config.tie_word_embeddings:
                n += self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """PaLM training FLOPs per token: 6·N (non-input-embedding params) + 12·L·d·T (attention)."""
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layers * c.hidden_dim * seq_len

    # -- RoPE ----------------------------------------------------------------------------------

    def _rope(self, T: int, past: int, position_ids, max_seqlen: int, device):
        """cos/sin for this call: (T, D/2) for contiguous positions past..past+T-1, else (B, T, D/2)."""
        c = self.config
        length = max(past + T, max_seqlen)
        if c.rope_scaling_type == "none" and length > c.max_seq_len:
            raise ValueError(
                f"sequence length {length} (tokens {T} + cached {past}, or max_seqlen {max_seqlen}) exceeds "
                f"max_seq_len={c.max_seq_len}; shorten the input or set --rope_scaling_type=linear|dynamic"
            )
        length = max(length, c.max_seq_len)
        key = (str(device), length)
        table = self._rope_tables.get(key)
        if table is None:
            table = ops.rope_cache(length, c.head_dim, c.rope_theta, scaling_type=c.rope_scaling_type,
                                   scaling_factor=c.rope_scaling_factor, device=device,
                                   original_max_seq_len=c.max_seq_len)
            if length == c.max_seq_len:  # the training length; longer (generation) tables are not kept
                self._rope_tables[key] = table
        cos, sin = table
        if position_ids is None:
            return cos[past:past + T], sin[past:past + T]
        if self._host_checks(position_ids):
            _check_range("position_ids", position_ids, length)
        return cos[position_ids], sin[position_ids]

    # -- forward -------------------------------------------------------------------------------

    def _host_checks(self, t: torch.Tensor) -> bool:
        return t.device.type == "cpu" or self.config.debug_checks

    def hidden_states(self, input_ids, position_ids=None, cu_seqlens=None, max_seqlen=None, kv_cache=None):
        """Final normed hidden states (B, T, d)."""
        B, T = _check_shapes(input_ids, position_ids, cu_seqlens)
        if self._host_checks(input_ids):
            _check_range("input_ids", input_ids, self.config.vocab_size)
        max_seqlen = T if max_seqlen is None else max_seqlen
        if cu_seqlens is not None:
            if self._host_checks(cu_seqlens):
                _check_cu_seqlens(cu_seqlens, B * T, max_seqlen)
            if position_ids is None:
                position_ids = _positions_from_cu_seqlens(cu_seqlens, B, T)
        past = 0 if kv_cache is None else kv_cache.length
        cos, sin = self._rope(T, past, position_ids, max_seqlen, input_ids.device)
        hidden, residual = self.embed_tokens(input_ids), None
        packed = ops.packed_docs(B, T, cu_seqlens, max_seqlen)  # every layer shares its attention mask
        # full: each block keeps only its inputs and reruns its forward in backward; selective needs
        # nothing here: the MLP's down_proj recomputes the SwiGLU output itself (SwiGLUDownProj)
        use_ckpt = (self.config.activation_checkpointing == "full" and self.training and kv_cache is None
                    and torch.is_grad_enabled())
        for i, layer in enumerate(self.layers):
            args = (hidden, residual, cos, sin, packed, kv_cache, i)
            if use_ckpt:
                hidden, residual = checkpoint(layer, *args, use_reentrant=False)
            else:
                hidden, residual = layer(*args)
        if kv_cache is not None:
            kv_cache.advance(T)
        normed, _ = self.norm(hidden, residual)
        return normed

    def forward(self, input_ids, labels=None, targets=None, position_ids=None, cu_seqlens=None,
                return_logits: bool | None = None, loss_reduction: str = "mean", max_seqlen: int | None = None,
                kv_cache=None) -> Z2allOutput:
        """Loss (and logits when asked).

        input_ids (B,T) int64. labels (B,T): HF convention, shifted inside (position t predicts labels[t+1]).
        targets (B,T): already aligned (position t predicts targets[t]); -100 is ignored in both.
        position_ids (B,T) or (1,T): RoPE positions (default: 0..T-1, or per document when cu_seqlens is
        given). cu_seqlens (n_docs+1,) int32: document offsets over the flattened B*T tokens; attention
        never crosses a document. max_seqlen: the longest document (default T; pass it when documents may
        span rows). loss_reduction: "mean" over non-ignored tokens, "sum", or "none": the (B,T) fp32 loss of
        each position (0 where ignored), for losses that weigh tokens afterwards (DPO's sequence log-probs).
        Logits (B,T,V) are returned when return_logits=True, or when neither labels nor targets is given;
        the loss never materialises them (fused linear cross-entropy in chunks).
        """
        if labels is not None and targets is not None:
            raise ValueError("pass either labels (HF convention, shifted inside) or targets (pre-aligned), not both")
        if loss_reduction not in ("mean", "sum", "none"):
            raise ValueError(f"loss_reduction must be 'mean', 'sum' or 'none', got {loss_reduction!r}")
        for name, t in (("labels", labels), ("targets", targets)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(f"{name} shape {tuple(t.shape)} must equal input_ids shape {tuple(input_ids.shape)}")
        if labels is not None:
            targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)
        if targets is not None and self._host_checks(targets):
            _check_range("labels/targets (other than -100)", targets[targets != -100], self.config.vocab_size)
        hidden = self.hidden_states(input_ids, position_ids, cu_seqlens, max_seqlen, kv_cache)
        loss = logits = None
        if targets is not None:
            loss = self.lm_head(hidden, targets, reduction=loss_reduction)
        if return_logits or (return_logits is None and targets is None):
            logits = self.lm_head(hidden)
        return Z2allOutput(loss, logits)

    # -- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_id: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue prompt_ids ((B,T) tensor or list of ids); temperature=0 is greedy. See model/generate.py."""
        from model.generate import generate

        return generate(self, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        eos_id=eos_id, use_cache=use_cache, generator=generator)

    # -- save / load ---------------------------------------------------------------------------

    def save_pretrained(self, save_dir: str | os.PathLike) -> None:
        """Write config.json and model.safetensors (lm_head.weight left out when tied); see model/weights.py."""
        save_pretrained(self, save_dir)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None, config_overrides: dict | None = None) -> "Z2allForCausalLM":
        """Load a saved dir, a checkpoint step dir, or a run dir (its newest complete checkpoint).

        config_overrides replace config fields that do not change the shape (e.g. op impls, dropout).
        """
        config, state, _ = read_pretrained(path)
        unknown = [k for k in (config_overrides or {}) if not hasattr(config, k)]
        if unknown:
            raise ValueError(f"config_overrides: unknown Z2allConfig field {unknown[0]!r}")
        config = dataclasses.replace(config, **(config_overrides or {}))
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state, strict=True, assign=True)
        model._tie()
        return model.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# helpers


def _drop_tied_head(module, state_dict, prefix, local_metadata) -> None:
    if module.config.tie_word_embeddings:
        state_dict.pop(prefix + "lm_head.weight", None)


def _fill_tied_head(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                    error_msgs) -> None:
    head, embed = prefix + "lm_head.weight", prefix + "embed_tokens.weight"
    if module.config.tie_word_embeddings and head not in state_dict and embed in state_dict:
        state_dict[head] = state_dict[embed]


def _check_shapes(input_ids, position_ids, cu_seqlens) -> tuple[int, int]:
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input_ids must be a (B, T) int64 tensor, got shape {tuple(input_ids.shape)} "
                         f"dtype {input_ids.dtype}")
    B, T = input_ids.shape
    if position_ids is not None and (position_ids.dim() != 2 or position_ids.shape[1] != T
                                     or position_ids.shape[0] not in (1, B)):
        raise ValueError(f"position_ids shape {tuple(position_ids.shape)} must be ({B}, {T}) or (1, {T})")
    if cu_seqlens is not None and (cu_seqlens.dim() != 1 or cu_seqlens.dtype != torch.int32):
        raise ValueError(f"cu_seqlens must be a 1-D int32 tensor of document offsets, got shape "
                         f"{tuple(cu_seqlens.shape)} dtype {cu_seqlens.dtype}")
    return B, T


@torch.compiler.disable
def _check_range(name: str, t: torch.Tensor, upper: int) -> None:
    """Host-syncing check 0 <= t < upper (CPU always; CUDA only with --debug_checks)."""
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= upper):
        raise ValueError(f"{name} must lie in [0, {upper}), got values in [{int(t.min())}, {int(t.max())}]; "
                         f"check the tokenizer/data against --vocab_size (ids) or --max_seq_len (positions)")


@torch.compiler.disable
def _check_cu_seqlens(cu: torch.Tensor, total: int, max_seqlen: int) -> None:
    c = cu.tolist()
    lengths = [b - a for a, b in zip(c[:-1], c[1:])]
    if len(c) < 2 or c[0] != 0 or c[-1] != total or min(lengths) < 0:
        raise ValueError(f"cu_seqlens must rise from 0 to B*T={total}, got {c}")
    if max(lengths) > max_seqlen:
        raise ValueError(f"a document has {max(lengths)} tokens > max_seqlen={max_seqlen}; pass max_seqlen")


def _positions_from_cu_seqlens(cu_seqlens: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """Positions restarting at 0 in each document, computed on the device (no host sync)."""
    idx = torch.arange(B * T, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    doc = torch.searchsorted(cu_seqlens, idx, right=True) - 1
    return (idx - cu_seqlens[doc]).view(B, T).long()
