"""Tokenizers: the Z2allTokenizer class, project-managed special tokens, training and the chat template; HFTokenizer
for a model that brings its own Hugging Face tokenizer. `load_tokenizer(dir)` opens either."""
from __future__ import annotations

import os

from tokenizer.chat_template import ChatEncoding, render_chat, render_generation_prompt
from tokenizer.hf_tokenizer import HFTokenizer
from tokenizer.special_tokens import SPECIAL_TOKENS
from tokenizer.tokenizer import Z2ALL_FILE, Z2allTokenizer

__all__ = ["Z2allTokenizer", "HFTokenizer", "load_tokenizer", "is_tokenizer_dir", "SPECIAL_TOKENS", "ChatEncoding",
           "render_chat", "render_generation_prompt"]


def is_tokenizer_dir(path: str | os.PathLike) -> bool:
    """A z2all tokenizer dir (z2all_tokenizer.json) or a Hugging Face one (tokenizer.json)."""
    return any(os.path.isfile(os.path.join(path, name)) for name in (Z2ALL_FILE, "tokenizer.json"))


def load_tokenizer(path: str | os.PathLike) -> Z2allTokenizer | HFTokenizer:
    """The tokenizer saved in `path`: a Z2allTokenizer where z2all_tokenizer.json is, else an HFTokenizer of its
    tokenizer.json; a ValueError naming the path otherwise."""
    path = str(path)
    if not os.path.isdir(path):
        raise ValueError(f"no such tokenizer directory: {path}")
    if os.path.isfile(os.path.join(path, Z2ALL_FILE)):
        return Z2allTokenizer.from_pretrained(path)
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        return HFTokenizer.from_pretrained(path)
    raise ValueError(f"{path} holds no tokenizer (neither {Z2ALL_FILE} nor a Hugging Face tokenizer.json); train one "
                     f"with `python -m data_preprocess.train_tokenizer --input=... --out_dir=DIR`, or pass the model's "
                     f"tokenizer directory")
