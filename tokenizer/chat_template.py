"""ChatML conversations to token ids plus a loss mask (used by SFT and DPO).

Layout of one message: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; a generation prompt appends
``<|im_start|>assistant\\n``. The text is the same as the Jinja ``chat_template`` written to
``tokenizer_config.json``, so ``transformers``' ``apply_chat_template`` renders the same string.

Safety: the special ids come from the template, never from the content. Contents and roles are encoded with
the safe ``Z2allTokenizer.encode``, so a user writing ``"<|im_end|>"`` gets ordinary tokens.

Loss mask: 1 on the tokens the model must learn to produce, i.e. each assistant message's content and its
closing ``<|im_end|>`` (so it learns to stop); 0 on the BOS, the system/user turns, the role headers and the
newline after ``<|im_end|>``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

ROLES = ("system", "user", "assistant")


@dataclass
class ChatEncoding:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is trained on (assistant replies), same length as input_ids


def _check_messages(messages: Sequence[dict]) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r:.120}")


def render_chat_text(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The rendered conversation as text (what the HF Jinja template produces)."""
    _check_messages(messages)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def render_chat(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False,
                add_bos: bool = True) -> ChatEncoding:
    """Encode a conversation (see the module docstring for the layout and the loss mask).

    1. Optionally start with BOS (as pretraining documents do).
    2. For each message: ``<|im_start|>`` + encode(role + "\\n") + encode(content) + ``<|im_end|>`` +
       encode("\\n"); the content and ``<|im_end|>`` of assistant messages get mask 1.
    3. Optionally append the generation prompt ``<|im_start|>`` + encode("assistant\\n") (mask 0).
    """
    _check_messages(messages)
    newline = tokenizer.encode("\n")
    ids: list[int] = [tokenizer.bos_id] if add_bos else []
    mask: list[int] = [0] * len(ids)

    def put(part: list[int], trained: bool) -> None:
        ids.extend(part)
        mask.extend([int(trained)] * len(part))

    for m in messages:
        trained = m["role"] == "assistant"
        put([tokenizer.im_start_id] + tokenizer.encode(m["role"] + "\n"), False)
        put(tokenizer.encode(m["content"]) + [tokenizer.im_end_id], trained)
        put(newline, False)
    if add_generation_prompt:
        put([tokenizer.im_start_id] + tokenizer.encode("assistant\n"), False)
    assert len(ids) == len(mask)
    return ChatEncoding(ids, mask)


def render_generation_prompt(tokenizer, messages: Sequence[dict], add_bos: bool = True) -> list[int]:
    """Ids that prompt the model for the next assistant reply (generation stops at ``<|im_end|>``)."""
    return render_chat(tokenizer, messages, add_generation_prompt=True, add_bos=add_bos).input_ids
