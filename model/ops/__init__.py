"""Fused ops for the Z2all model: Triton kernels with plain-PyTorch references (see ARCHITECTURE.md, "Ops").

Each op's `impl` is "auto" | "triton" | "torch"; auto = Triton on CUDA, the reference elsewhere.
Triton is optional: without it every op still works through its torch path.
"""
from model.ops._triton_utils import resolve_impl, triton_available
from model.ops.add_rmsnorm import add_rms_norm, add_rms_norm_ref
from model.ops.attention import (PackedDocs, attention, attention_ref, flash_attn_available, flex_attention_available,
                                 packed_docs)
from model.ops.cross_entropy import (fused_linear_cross_entropy, linear_cross_entropy_per_token,
                                     linear_cross_entropy_ref)
from model.ops.fp8 import (Fp8Input, check_fp8, dequantize_rows, dequantize_rows_ref, fp8_unsupported, quantize_rows,
                           quantize_rows_ref)
from model.ops.fp8_linear import Fp8Weight, Fp8WeightCache, fp8_linear, fp8_linear_ref
from model.ops.linear import linear
from model.ops.rmsnorm import rms_norm, rms_norm_ref
from model.ops.rope import apply_rope, apply_rope_ref, rope_cache, rope_qkv, rope_qkv_ref
from model.ops.swiglu import silu_mul, swiglu, swiglu_down, swiglu_down_ref, swiglu_ref

__all__ = [
    "Fp8Input",
    "Fp8Weight",
    "Fp8WeightCache",
    "PackedDocs",
    "add_rms_norm",
    "add_rms_norm_ref",
    "apply_rope",
    "apply_rope_ref",
    "attention",
    "attention_ref",
    "check_fp8",
    "dequantize_rows",
    "dequantize_rows_ref",
    "flash_attn_available",
    "flex_attention_available",
    "fp8_linear",
    "fp8_linear_ref",
    "fp8_unsupported",
    "fused_linear_cross_entropy",
    "linear",
    "linear_cross_entropy_per_token",
    "linear_cross_entropy_ref",
    "packed_docs",
    "quantize_rows",
    "quantize_rows_ref",
    "resolve_impl",
    "rms_norm",
    "rms_norm_ref",
    "rope_cache",
    "rope_qkv",
    "rope_qkv_ref",
    "silu_mul",
    "swiglu",
    "swiglu_down",
    "swiglu_down_ref",
    "swiglu_ref",
    "triton_available",
]
