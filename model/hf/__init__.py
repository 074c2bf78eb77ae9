"""Hugging Face adapters: export a run as LlamaForCausalLM/Qwen2ForCausalLM, import one as a run, and patch a
transformers model with our fused ops.

    python -m model.hf.export_hf --ckpt=RUN --out_dir=DIR
    python -m model.hf.import_hf --hf_dir=DIR --out_dir=RUN
    from model.hf import patch_hf
"""
from model.hf.patch import patch_hf

__all__ = ["patch_hf"]
