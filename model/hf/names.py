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


def one_to_one_pairs(n_layers: int, tie_word_embeddings: bool) -> list[tuple[str, str]]:
    """(our key, HF key) for every tensor that maps one to one, the untied lm_head included."""
    pairs = list(TOP_LEVEL_NAMES.items())
    if not tie_word_embeddings:
        pairs.append(("lm_head.weight", "lm_head.weight"))
    for i in range(n_layers):
        pairs += [(f"layers.{i}.{ours}", f"model.layers.{i}.{hf}") for ours, hf in LAYER_NAMES.items()]
    return pairs
