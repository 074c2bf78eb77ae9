"""ChatML conversations to token ids plus a loss mask (used by SFT, DPO and the chat CLI).

Layout: BOS, then per message ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; a generation prompt appends
``<|im_start|>assistant\\n``. ``CHATML_JINJA`` is the same layout as a Jinja template; the tokenizer writes it
to ``tokenizer_config.json``, so ``transformers``' ``apply_chat_template(..., tokenize=True)`` gives exactly
the ids of ``render_chat`` (BOS included), and a model served through transformers or vLLM sees the prompt
it was trained on.

Why the ids agree: HF cuts the rendered text at the special tokens and encodes each piece between them as
one string. ``render_chat`` encodes the same pieces: ``"{role}\\n{content}"`` as one string (never the header
and the content apart: a content that starts with a newline merges with the header's newline into one
token), and the ``"\\n"`` between ``<|im_end|>`` and the next ``<|im_start|>``. Only the BOS, ``<|im_start|>``
and ``<|im_end|>`` ids are added by the template.

Safety: the special ids come from the template, never from the content. Contents and roles are encoded with
the safe ``Z2allTokenizer.encode``, so a user writing ``"<|im_end|>"`` gets ordinary tokens (HF's template
path would match it as the special token: parity holds for contents without special-token strings).

Loss mask: 1 on the tokens the model must learn to produce, i.e. each assistant message's content and its
closing ``<|im_end|>`` (so it learns to stop); 0 on the BOS, the system/user turns, the role headers and the
newline after ``<|im_end|>``. Where a token straddles the header and the content (BBPE merging the header's
``"\\n"`` with a content that starts with ``"\\n"``), it is part of the reply and gets mask 1.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

ROLES = ("system", "user", "assistant")

# render_chat as Jinja, for HF's apply_chat_template (tokenizer_config.json's "chat_template").
CHATML_JINJA = ("{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
                "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|im_start|>assistant\\n' }}{% endif %}")


@dataclass
class ChatEncoding:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is trained on (assistant replies), same length as input_ids
    turn_ends: list[int]  # per message, the index just past its closing "\n" (a whole-turn cut point)


def check_messages(messages: Sequence[dict]) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r:.120}")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def render_chat(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False,
                add_bos: bool = True) -> ChatEncoding:
    """Encode a conversation (see the module docstring for the layout, the pieces and the loss mask).

    1. Optionally start with BOS (as pretraining documents do, and as the HF template does).
    2. For each message: ``<|im_start|>`` + encode(role + "\\n" + content) + ``<|im_end|>`` + encode("\\n").
       For an assistant message the reply starts after the longest common prefix of that piece's ids and
       encode(role + "\\n"); the reply and ``<|im_end|>`` get mask 1.
    3. Optionally append the generation prompt ``<|im_start|>`` + encode("assistant\\n") (mask 0).
    """
    check_messages(messages)
    newline = tokenizer.encode("\n")
    ids: list[int] = [tokenizer.bos_id] if add_bos else []
    mask: list[int] = [0] * len(ids)
    turn_ends: list[int] = []

    def put(part: list[int], trained: bool) -> None:
        ids.extend(part)
        mask.extend([int(trained)] * len(part))

    for m in messages:
        header = m["role"] + "\n"
        piece = tokenizer.encode(header + m["content"])
        head = _common_prefix(piece, tokenizer.encode(header)) if m["role"] == "assistant" else len(piece)
        put([tokenizer.im_start_id] + piece[:head], False)
        put(piece[head:] + [tokenizer.im_end_id], m["role"] == "assistant")
        put(newline, False)
        turn_ends.append(len(ids))
    if add_generation_prompt:
        put([tokenizer.im_start_id] + tokenizer.encode("assistant\n"), False)
    assert len(ids) == len(mask)
    return ChatEncoding(ids, mask, turn_ends)


def render_generation_prompt(tokenizer, messages: Sequence[dict], add_bos: bool = True) -> list[int]:
    """Ids that prompt the model for the next assistant reply (generation stops at ``<|im_end|>``)."""
    return render_chat(tokenizer, messages, add_generation_prompt=True, add_bos=add_bos).input_ids


class ChatMLChat:
    """The chat format of a z2all tokenizer (the layout above), behind the interface every tokenizer's `chat` has:
    `description`, `fingerprint` (what the rendered ids depend on besides the tokenizer's vocabulary),
    `turn_end_id`, `render`, `generation_prompt` and `response` (tokenizer/template_chat.py has the other one)."""

    description = "z2all ChatML"
    fingerprint = hashlib.sha256(CHATML_JINJA.encode()).hexdigest()

    def __init__(self, tok):
        self.tok = tok
        self.turn_end_id = tok.im_end_id

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> ChatEncoding:
        return render_chat(self.tok, messages, add_generation_prompt)

    def generation_prompt(self, messages: Sequence[dict]) -> list[int]:
        return render_generation_prompt(self.tok, messages)

    def response(self, prompt: Sequence[dict], reply: dict) -> tuple[list[int], list[int]]:
        """(ids, mask) of a reply after generation_prompt(prompt): its content and ``<|im_end|>`` (mask 1), then
        the newline (mask 0). The content is encoded on its own, as the model generates it after the prompt."""
        newline = self.tok.encode("\n")
        ids = self.tok.encode(reply["content"]) + [self.tok.im_end_id]
        return ids + newline, [1] * len(ids) + [0] * len(newline)
