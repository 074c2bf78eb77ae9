"""Conversations through a tokenizer's own Jinja chat template (a Hugging Face tokenizer's ``chat_template``), with
the loss-mask rule of tokenizer/chat_template.py: exactly the assistant replies and their end-of-turn token.

Rendering: the template runs in a sandboxed Jinja environment made as transformers makes its own (trim_blocks,
lstrip_blocks, loop controls, ``tojson``, ``raise_exception``, ``strftime_now``, the ``{% generation %}`` tag),
with the tokenizer's named tokens (``bos_token``, ``eos_token``, ...) as variables: the text of transformers'
``apply_chat_template``.

Ids: the text is encoded as transformers encodes it (the whole tokenizer: the template's special tokens become
their ids), except that a special-token string inside a message's content is encoded as plain text (as
``apply_chat_template(..., sanitize_control_tokens=True)`` does), so a message cannot forge a turn. For contents
without special-token strings the ids are exactly ``apply_chat_template(..., tokenize=True)``'s.

Where each turn is: the template is rendered for every prefix of the conversation, ``messages[:k]``, and before
each assistant message k also ``messages[:k]`` with the generation prompt. Each rendering must extend the one
before it (a template that rewrites earlier turns when a later one is added is refused with the turn). Turn k
is the text between the renderings of ``messages[:k]`` and ``messages[:k+1]``; an assistant reply starts where
the generation prompt ends, which is where a model served with this template starts generating.

Loss mask: 1 on every token that overlaps the text from the end of the generation prompt to the end of the
first end-of-turn token after the reply's content (the end-of-turn token is the first special token a probe
rendering puts after a reply: ``<|im_end|>`` in ChatML, ``<|eot_id|>`` in Llama 3, ``</s>`` in Mistral's
template); 0 everywhere else (system and user turns, headers, what follows the end-of-turn token such as
ChatML's newline). A token straddling the header and the reply is part of the reply, as in render_chat.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from tokenizer.chat_template import ChatEncoding, check_messages

_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
_STYLES = (("<|start_header_id|>", "Llama-3 style"), ("<|im_start|>", "ChatML style"), ("[INST]", "Mistral style"))


def compile_template(source: str):
    """The template compiled in a sandbox with transformers' globals and filters (see the module docstring)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    if tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3]) < (3, 1, 6):
        # older releases have known sandbox escapes, and a chat template is code from the model's author
        raise ValueError(f"chat templates need jinja2 >= 3.1.6 (installed: {jinja2.__version__}); "
                         f"pip install -U jinja2")

    class Generation(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %} marks assistant text for transformers; here it renders as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; transformers' does not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise ValueError(f"the chat template does not compile ({type(e).__name__}: {e})") from e


def template_style(source: str) -> str:
    return next((name for marker, name in _STYLES if marker in source), "custom")


@dataclass
class _Layout:
    """A rendered conversation: its text and, as character spans of it, what the ids and the mask need."""

    text: str
    contents: list[tuple[int, int]]  # each message's content (special-token strings there are plain text)
    trained: list[tuple[int, int]]  # each assistant reply, from the generation prompt's end to its end-of-turn
    turn_ends: list[int]  # each message's end


class TemplateChat:
    """The chat format of a tokenizer with its own template: render, generation prompt, DPO response.

    `tok` is an HFTokenizer (tokenizer/hf_tokenizer.py): it gives the template's variables
    (`template_tokens`), `special_tokens`, the whole-tokenizer encoding with offsets (`encode_with_offsets`)
    and the plain-text one (`encode`). `where` names the template's file for messages.
    """

    def __init__(self, tok, source: str, where: str, description: str = ""):
        self.tok, self.where = tok, where
        self.template = compile_template(source)
        self.description = description or f"the tokenizer's own ({template_style(source)}, from {where})"
        self.fingerprint = hashlib.sha256(json.dumps([source, tok.template_tokens], sort_keys=True).encode()).hexdigest()
        specials = sorted(tok.special_tokens, key=len, reverse=True)  # longest first: no prefix shadows a token
        self._special_re = re.compile("|".join(map(re.escape, specials))) if specials else None
        self.turn_end, self.turn_end_id = self._find_turn_end()

    # ---- rendering --------------------------------------------------------------------------------------------
    def _render(self, messages: Sequence[dict], add_generation_prompt: bool) -> str:
        import jinja2

        try:
            return self.template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                        tools=None, documents=None, **self.tok.template_tokens)
        except jinja2.TemplateError as e:
            raise ValueError(f"the chat template {self.where} refused the conversation: {e}") from e

    def _empty(self) -> str:
        """The rendering of no messages; "" for a template that cannot render none (it reads messages[0])."""
        try:
            return self._render([], False)
        except ValueError:
            return ""

    def _extend(self, before: str, messages: Sequence[dict], add_generation_prompt: bool, k: int) -> str:
        text = self._render(messages, add_generation_prompt)
        if not text.startswith(before):
            raise ValueError(f"the chat template {self.where} rewrites the turns before message {k} when it renders "
                             f"message {k}, so the assistant turns cannot be located; give SFT/DPO a template whose "
                             f"renderings of a conversation's prefixes extend each other (--tokenizer_dir=A_COPY)")
        return text

    def _content(self, text: str, start: int, content: str, first: bool, k: int) -> tuple[int, int]:
        """The span of message k's content in text[start:] (the template may strip it)."""
        for c in (content, content.strip()):
            i = text.find(c, start) if first else text.rfind(c, start)
            if i >= 0:
                return i, i + len(c)
        raise ValueError(f"the chat template {self.where} does not write message {k}'s content as it is (nor "
                         f"stripped), so its tokens cannot be located")

    def _find_turn_end(self) -> tuple[str, int]:
        before = self._render(_PROBE[:1], True)
        full = self._extend(before, _PROBE, False, 1)
        _, end = self._content(full, len(before), _PROBE[1]["content"], True, 1)
        m = self._special_re.search(full, end) if self._special_re else None
        if m is None:
            raise ValueError(f"the chat template {self.where} ends an assistant turn with no special token (after a "
                             f"reply it writes {full[end:]!r}), so a model cannot learn where to stop; use a template "
                             f"that closes each turn with one")
        return m.group(0), self.tok.special_tokens[m.group(0)]

    def _layout(self, messages: Sequence[dict], add_generation_prompt: bool) -> _Layout:
        check_messages(messages)
        text, contents, trained, ends = self._empty(), [], [], []
        for k, m in enumerate(messages):
            start = len(text)
            if m["role"] == "assistant":
                prompt = self._extend(text, messages[:k], True, k)
                text = self._extend(prompt, messages[:k + 1], False, k)
                span = self._content(text, len(prompt), m["content"], True, k)
                eot = text.find(self.turn_end, span[1])
                if eot < 0:
                    raise ValueError(f"the chat template {self.where} does not close assistant message {k} with "
                                     f"{self.turn_end}, so a model cannot learn to stop there")
                trained.append((len(prompt), eot + len(self.turn_end)))
            else:
                text = self._extend(text, messages[:k + 1], False, k)
                span = self._content(text, start, m["content"], False, k)
            contents.append(span)
            ends.append(len(text))
        if add_generation_prompt:
            text = self._extend(text, messages, True, len(messages))
        return _Layout(text, contents, trained, ends)

    # ---- ids --------------------------------------------------------------------------------------------------
    def _encode(self, lay: _Layout, lo: int, hi: int) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of lay.text[lo:hi] and each id's character span: the whole tokenizer, except the special-token
        strings inside contents, which are encoded as plain text."""
        cuts = []  # (start, end) of special-token strings inside contents, in order
        if self._special_re is not None:
            for a, b in lay.contents:
                cuts += [m.span() for m in self._special_re.finditer(lay.text, max(a, lo), min(b, hi))]
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        pos = lo
        for a, b in cuts + [(hi, hi)]:
            if a > pos:
                piece_ids, offsets = self.tok.encode_with_offsets(lay.text[pos:a])
                ids += piece_ids
                spans += [(pos + s, pos + e) for s, e in offsets]
            if b > a:
                piece_ids = self.tok.encode_as_text(lay.text[a:b])
                ids += piece_ids
                spans += [(a, b)] * len(piece_ids)
            pos = b
        return ids, spans

    @staticmethod
    def _mask(spans: list[tuple[int, int]], trained: list[tuple[int, int]]) -> list[int]:
        """1 for each token whose span overlaps a trained span (transformers' assistant-mask rule)."""
        return [int(any(s < b and e > a for a, b in trained)) for s, e in spans]

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> ChatEncoding:
        lay = self._layout(messages, add_generation_prompt)
        ids, spans = self._encode(lay, 0, len(lay.text))
        ends = [sum(1 for s, _ in spans if s < end) for end in lay.turn_ends]
        return ChatEncoding(ids, self._mask(spans, lay.trained), ends)

    def generation_prompt(self, messages: Sequence[dict]) -> list[int]:
        return self.render(messages, add_generation_prompt=True).input_ids

    def response(self, prompt: Sequence[dict], reply: dict) -> tuple[list[int], list[int]]:
        """(ids, mask) of a reply after generation_prompt(prompt): what the model generates there (mask 1 up to its
        end-of-turn token) and what the template writes after it (mask 0)."""
        lay = self._layout(list(prompt) + [reply], False)
        start = lay.trained[-1][0]
        ids, spans = self._encode(lay, start, len(lay.text))
        return ids, self._mask(spans, lay.trained)
