"""The Z2all <-> Hugging Face Llama/Qwen2 parameter names that map one to one (export_hf and import_hf).

The fused qkv_proj and gate_up_proj are split and joined by the two converters themselves; lm_head.weight
keeps its name.
"""
# ours -> Hugging Face (import_hf reads the table inverted)
TOP_LEVEL_NAMES = {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}
