"""Tokenizers: the Z2allTokenizer class, project-managed special tokens, training and the chat template."""
from tokenizer.chat_template import ChatEncoding, render_chat, render_generation_prompt
from tokenizer.special_tokens import SPECIAL_TOKENS
from tokenizer.tokenizer import Z2allTokenizer

__all__ = ["Z2allTokenizer", "SPECIAL_TOKENS", "ChatEncoding", "render_chat", "render_generation_prompt"]
