"""Tiny Hugging Face checkpoints built in the test (nothing downloaded): Llama / Qwen2 / Mistral models from their
configs, and fast tokenizers trained on a few strings with a ChatML-style (Qwen2's) or a Llama-3-style template.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.support.finetune import WORDS

# Qwen2-Instruct's template: ChatML with a default system turn when the conversation has none, no BOS.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Meta-Llama-3-Instruct's template: BOS, header tokens around the role, trimmed contents, <|eot_id|> after each turn.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

STYLES = {
    # special tokens (in id order, first), the named ones, the template
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
               dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"), CHATML_TEMPLATE),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"), LLAMA3_TEMPLATE),
}
CORPUS = [f"Say the colour {w} ({i}). Please. {w} {w} no. You are a helpful assistant. Answer with colours."
          for i, w in enumerate(WORDS * 4)] + ["def f(x): return x\n    \"\"\"Return x.\"\"\"\n", "Hello there, hi!"]


def make_tokenizer(out_dir, style: str, vocab_size: int = 400, template: bool = True):
    """A byte-level BPE fast tokenizer with `style`'s special tokens and template, saved by transformers; returns
    the transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials, named, chat_template = STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    if template:
        fast.chat_template = chat_template
    fast.save_pretrained(str(out_dir))
    return fast


SHAPES = {
    # name: (model type, config kwargs)
    "llama_gqa": ("llama", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                num_hidden_layers=2)),
    "llama_tied": ("llama", dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=4, intermediate_size=80,
                                 num_hidden_layers=1, tie_word_embeddings=True)),
    "qwen2_bias": ("qwen2", dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                 num_hidden_layers=2)),
    "mistral": ("mistral", dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                num_hidden_layers=2, sliding_window=None)),
}


def make_model(out_dir, shape: str, style: str = "chatml", vocab_size: int = 448, max_position_embeddings: int = 128,
               seed: int = 0, tokenizer: bool = True, **overrides) -> Path:
    """A random tiny HF model of SHAPES[shape] (norm weights and biases randomised too, so no mapping error hides
    behind ones and zeros) saved with save_pretrained, with a `style` tokenizer beside it; returns the dir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out_dir)
    mtype, kwargs = SHAPES[shape]
    cfg = AutoConfig.for_model(mtype, vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                               rms_norm_eps=1e-5, rope_theta=500.0, **{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("bias"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    if tokenizer:
        fast = make_tokenizer(out, style)
        model.config.eos_token_id, model.config.bos_token_id = fast.eos_token_id, fast.bos_token_id
        model.config.pad_token_id = fast.pad_token_id
    model.save_pretrained(str(out))
    return out


def write_records(path, n: int = 48) -> str:
    """SFT records (colour words: learnable) as .jsonl; returns the path."""
    recs = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        turns = [{"role": "user", "content": f"Say the colour {w} ({i})." + " Please." * (i % 4)},
                 {"role": "assistant", "content": f"{w} {w}"}]
        if i % 3 == 0:
            turns = [{"role": "system", "content": "Answer with colours."}] + turns
        recs.append({"messages": turns})
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return str(path)
