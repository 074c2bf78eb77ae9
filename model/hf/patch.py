"""Use the z2all fused ops inside a Hugging Face Llama, Qwen2 or Mistral model.

`patch_hf(model)` swaps, in place:
1. every *RMSNorm module's forward -> `rms_norm` (same weight Parameter, so state dicts and optimizers are
   unchanged);
2. every MLP's forward -> down_proj(silu_mul(gate_proj(x), up_proj(x))) with the fused SiLU-multiply;
3. the modeling module's `apply_rotary_pos_emb` -> `apply_rope` (q and k in one launch). Hugging Face looks this
   function up as a module global, so this part applies to every model of that family in the process; the
   replacement computes the same values (in fp32), so unpatched models of the same family stay correct;
4. the *ForCausalLM forward when `labels` are given -> the chunked fused linear cross-entropy on the last hidden
   states (labels shifted as Hugging Face does; `num_items_in_batch` honoured). The logits are then not
   materialized and the output's `logits` is None. Without labels the original forward runs unchanged.
Works with transformers 5.x and 4.4x (the module names and attributes used exist in both).
"""
from __future__ import annotations

import sys
import types

import torch

from model.ops.cross_entropy import fused_linear_cross_entropy
from model.ops.rmsnorm import rms_norm
from model.ops.rope import apply_rope
from model.ops.swiglu import silu_mul

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
SILU_NAMES = ("silu", "swish")


def _rmsnorm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    eps = getattr(self, "variance_epsilon", getattr(self, "eps", 1e-6))
    return rms_norm(hidden_states, self.weight, eps, impl=self._z2all_impl)


def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x), impl=self._z2all_impl))


def make_hf_rope(impl: str = "auto"):
    """A drop-in for Hugging Face's `apply_rotary_pos_emb(q, k, cos, sin, [position_ids,] unsqueeze_dim=1)`.

    Hugging Face passes q (B,H,T,D) and cos/sin (B or 1, T, D) with both halves equal; our op takes (B,T,H,D)
    views and half tables, so only views are made here.
    """

    def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        half = q.shape[-1] // 2
        cos_h, sin_h = cos[..., :half], sin[..., :half]
        if unsqueeze_dim == 1:
            q_out, k_out = apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos_h, sin_h, impl=impl)
            return q_out.transpose(1, 2), k_out.transpose(1, 2)
        return apply_rope(q, k, cos_h, sin_h, impl=impl)

    apply_rotary_pos_emb.z2all_patched = True
    return apply_rotary_pos_emb


def _shifted_targets(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    pad = torch.full_like(labels[..., :1], ignore_index)
    return torch.cat((labels[..., 1:], pad), dim=-1).reshape(-1)


def _causal_lm_forward(self, input_ids=None, labels=None, **kwargs):
    if labels is None:
        return self._z2all_orig_forward(input_ids=input_ids, **kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    num_items = kwargs.pop("num_items_in_batch", None)
    ignore_index = kwargs.pop("ignore_index", -100)
    for key in ("logits_to_keep", "num_logits_to_keep"):
        kwargs.pop(key, None)
    outputs = self.model(input_ids=input_ids, **kwargs)
    hidden = outputs[0]
    targets = _shifted_targets(labels.to(hidden.device), ignore_index)
    head = self.lm_head
    h2, weight, bias = hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias
    if torch.is_autocast_enabled(h2.device.type):
        # what autocast does for the nn.Linear head it replaces: the matmuls run in the autocast dtype, and
        # the casts carry the gradients back to the fp32 weight; the fused op itself sees one dtype
        dt = torch.get_autocast_dtype(h2.device.type)
        h2, weight = h2.to(dt), weight.to(dt)
        bias = bias.to(dt) if bias is not None else None
    loss = fused_linear_cross_entropy(
        h2, weight, targets, bias=bias, ignore_index=ignore_index,
        reduction="sum" if num_items is not None else "mean", chunk_size=self._z2all_chunk_size, impl=self._z2all_impl,
    )
    if num_items is not None:
        loss = loss / num_items
    return CausalLMOutputWithPast(
        loss=loss,
        logits=None,
        past_key_values=getattr(outputs, "past_key_values", None),
        hidden_states=getattr(outputs, "hidden_states", None),
        attentions=getattr(outputs, "attentions", None),
    )


def _is_mlp(module: torch.nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), torch.nn.Linear) for n in ("gate_proj", "up_proj", "down_proj"))


def patch_hf(
    model: torch.nn.Module,
    impl: str = "auto",
    rms_norm_ops: bool = True,
    rope: bool = True,
    swiglu: bool = True,
    cross_entropy: bool = True,
    chunk_size: int = 4096,
) -> torch.nn.Module:
    """Swap the norms, RoPE, SwiGLU MLPs and loss of a transformers Llama/Qwen2/Mistral model for z2all ops.

    Returns the same model (patched in place). impl applies to every op ("auto": Triton on CUDA).
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"patch_hf supports transformers models of type {SUPPORTED_MODEL_TYPES}; got {model_type!r} "
            f"({type(model).__name__})"
        )
    hidden_act = getattr(config, "hidden_act", "silu")
    if swiglu and hidden_act not in SILU_NAMES:
        raise ValueError(f"patch_hf swiglu=True needs hidden_act in {SILU_NAMES}; got {hidden_act!r}; pass swiglu=False")
    for module in model.modules():
        if rms_norm_ops and type(module).__name__.endswith("RMSNorm") and hasattr(module, "weight"):
            module._z2all_impl = impl
            module.forward = types.MethodType(_rmsnorm_forward, module)
        elif swiglu and _is_mlp(module):
            module._z2all_impl = impl
            module.forward = types.MethodType(_mlp_forward, module)
    if rope:
        modeling = sys.modules[type(model).__module__]
        if not hasattr(modeling, "apply_rotary_pos_emb"):
            raise ValueError(f"{modeling.__name__} has no apply_rotary_pos_emb to patch; pass rope=False")
        modeling.apply_rotary_pos_emb = make_hf_rope(impl)
    if cross_entropy and hasattr(model, "lm_head") and hasattr(model, "model"):
        if not hasattr(model, "_z2all_orig_forward"):
            model._z2all_orig_forward = model.forward
        model._z2all_impl = impl
        model._z2all_chunk_size = int(chunk_size)
        model.forward = types.MethodType(_causal_lm_forward, model)
    return model
