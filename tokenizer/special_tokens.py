"""The project's special tokens, and the helpers that keep them out of ordinary text.

Special tokens are never learned from data and never matched inside user text by ``Z2allTokenizer.encode``:
they get their ids only through an explicit ``allowed_special=...`` or from the chat template. They sit after
the trained vocabulary (BBPE) or are sentencepiece control symbols (which sentencepiece itself never matches
in text), in the fixed order below, so every tokenizer trained by the project has the same layout.
"""
from __future__ import annotations

import re
from typing import Iterable

BOS_TOKEN = "<|beginoftext|>"
EOS_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
NUM_RESERVED = 11  # 16 special tokens in all: room for tools/FIM markers later without retraining

SPECIAL_TOKENS: tuple[str, ...] = (BOS_TOKEN, EOS_TOKEN, IM_START_TOKEN, IM_END_TOKEN, PAD_TOKEN) + tuple(
    f"<|reserved_{i}|>" for i in range(NUM_RESERVED))


def resolve_allowed(allowed_special: str | Iterable[str], special_tokens: dict[str, int]) -> list[str]:
    """Turn ``allowed_special`` ("all", or an iterable of token strings) into a validated list of tokens."""
    if allowed_special == "all":
        return list(special_tokens)
    if isinstance(allowed_special, str):
        raise TypeError(f"allowed_special must be 'all' or a collection of special-token strings, "
                        f"got the string {allowed_special!r}; wrap a single token in a tuple")
    allowed = list(allowed_special)
    unknown = [t for t in allowed if t not in special_tokens]
    if unknown:
        raise ValueError(f"allowed_special has unknown tokens {unknown}; known: {', '.join(special_tokens)}")
    return allowed


def split_on_special(text: str, allowed: list[str]) -> list[tuple[str, bool]]:
    """Split ``text`` into ``(piece, is_special)`` parts, matching only the ``allowed`` special strings.

    Longer tokens are tried first so that a token that is a prefix of another cannot shadow it.
    """
    if not allowed:
        return [(text, False)]
    pattern = re.compile("|".join(re.escape(t) for t in sorted(allowed, key=len, reverse=True)))
    parts: list[tuple[str, bool]] = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            parts.append((text[pos:m.start()], False))
        parts.append((m.group(0), True))
        pos = m.end()
    if pos < len(text):
        parts.append((text[pos:], False))
    return parts
