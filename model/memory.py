"""How much memory training a Z2all model takes, estimated before anything is allocated.

`training_bytes` adds up (per rank):
1. weights: N params in the param dtype;
2. gradients: the DDP's main_grad buffer (fp32, or the param dtype) plus one param-sized autograd grad at a time;
3. optimizer state: AdamW's two fp32 moments, plus the fp32 main params (a full copy; 2 bytes when stored split
   with the bf16 params as their high half; none for fp32 params), all divided over the ranks with ZeRO-1;
4. activations saved for backward, per token and layer, from the block's anatomy: the norms' outputs and the
   residual (fp32 when residual_in_fp32), q/k/v and the attention output, the gate/up projection, the SwiGLU
   output and the MLP input; full checkpointing keeps only each block's input, selective drops the SwiGLU
   output; plus one chunk of the fused LM-head/cross-entropy logits.
5. FP8 (cfg.fp8): the two FP8 copies of each decoder linear weight (2 bytes per param), and the norms' and the
   SwiGLU outputs kept in FP8 (1 byte per element plus a 4-byte scale per row) instead of the param dtype.
It is an estimate (allocator slack, workspaces and the data loader are not in it): it catches a shape that
cannot fit, as the 1.25B default shape on a laptop, not a few percent.
"""
from __future__ import annotations

from dataclasses import dataclass

from model.config import Z2allConfig


@dataclass
class MemoryEstimate:
    params: int  # number of parameters
    static_bytes: int  # weights, gradients, optimizer state
    activation_bytes: int  # one micro-batch's saved activations

    @property
    def total_bytes(self) -> int:
        return self.static_bytes + self.activation_bytes


def num_params(cfg: Z2allConfig) -> int:
    d, kv = cfg.hidden_dim, cfg.n_kv_heads * cfg.head_dim
    per_layer = d * (d + 2 * kv) + d * d + 3 * d * cfg.intermediate_size + 2 * d
    if cfg.attention_bias:
        per_layer += d + 2 * kv
    head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * d
    return cfg.vocab_size * d + cfg.n_layers * per_layer + d + head


def training_bytes(cfg: Z2allConfig, tokens: int, param_bytes: int, main_grad_bytes: int, main_param_bytes: int,
                   zero_world: int = 1) -> MemoryEstimate:
    """Steps 1-4 of the module docstring for a micro-batch of `tokens` tokens; zero_world > 1 shards step 3."""
    n = num_params(cfg)
    static = n * param_bytes + n * main_grad_bytes + n * param_bytes + n * (8 + main_param_bytes) // zero_world
    d, kv, inter = cfg.hidden_dim, cfg.n_kv_heads * cfg.head_dim, cfg.intermediate_size
    residual = 4 if cfg.residual_in_fp32 else param_bytes
    per_layer = (4 * d + 2 * kv + 3 * inter) * param_bytes + 2 * d * residual
    fp8 = cfg.fp8 != "off"
    if fp8:
        static += 2 * cfg.n_layers * (d * (d + 2 * kv) + d * d + 3 * d * inter)
        per_layer -= 2 * d * (param_bytes - 1) - 8  # the two norms' outputs: codes and a scale per row
    if cfg.activation_checkpointing == "full":
        per_layer = d * residual
    elif cfg.activation_checkpointing == "selective":
        per_layer -= inter * param_bytes
    elif fp8:
        per_layer -= inter * (param_bytes - 1) - 4  # the SwiGLU output: codes and a scale per row
    logits = 2 * min(tokens, cfg.cross_entropy_chunk_size) * cfg.vocab_size * 4
    return MemoryEstimate(n, static, tokens * cfg.n_layers * per_layer + tokens * d * 4 + logits)


def check_fits(estimate: MemoryEstimate, available: int | None, where: str, micro_batch: str,
               shape_source: str = "") -> None:
    """ValueError (one line: the estimate, what is available, what to change) when the estimate cannot fit."""
    if available is None or estimate.total_bytes <= available:
        return
    gb = 1e9
    raise ValueError(
        f"training needs about {estimate.total_bytes / gb:.1f} GB on {where} ({estimate.params / 1e6:.0f}M params"
        f"{' of the shape from ' + shape_source if shape_source else ''}: "
        f"{estimate.static_bytes / gb:.1f} GB of weights, gradients and optimizer state, "
        f"{estimate.activation_bytes / gb:.1f} GB of activations for micro-batch {micro_batch}) but "
        f"{available / gb:.1f} GB is available; lower --batch_size or --max_seq_len, use "
        f"--activation_checkpointing=full or a smaller shape (configs/default.py), or shard with more ranks and "
        f"--use_distributed_optimizer (--memory_check=false skips this check)")
