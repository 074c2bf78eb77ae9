"""HFTokenizer: a Hugging Face fast-tokenizer directory behind the Z2allTokenizer interface, for a model that brings
its own tokenizer (``train.py --init_from=HF_DIR``, ``python -m tasks.chat HF_DIR``).

What it reads (only reads: the directory is the user's):
- ``tokenizer.json``: the Rust tokenizer. Its added tokens marked ``"special"`` are the special tokens.
- ``tokenizer_config.json`` (and ``special_tokens_map.json`` where an older transformers wrote the names there):
  ``bos_token``, ``eos_token``, ``pad_token``, ``unk_token`` (strings or ``{"content": ...}``) and
  ``chat_template`` (a string, or a list of ``{"name", "template"}`` of which ``default`` is used);
- ``chat_template.jinja``: where transformers >= 4.43 saves the template; it wins, as in transformers.

Ids: ``bos_id`` is the BOS, or the EOS for a tokenizer without one (Qwen2's delimit documents with EOS alone);
``pad_id`` the PAD, or the EOS (padded positions are never trained). ``vocab_size`` is the highest id + 1 and
``model_vocab_size`` the same: the HF model's own ``vocab_size`` (which may be larger: padding rows) decides the
embedding size, not a rounding of ours.

Safety, as Z2allTokenizer: ``encode(text)`` never makes a special id out of text. It runs the Rust tokenizer
without its special added tokens (its other added tokens stay: they are ordinary vocabulary for this tokenizer);
special ids come only through ``allowed_special``, ``add_bos``/``add_eos`` or the chat template.

``chat`` is the tokenizer's own template (tokenizer/template_chat.py), or z2all's ChatML when it has no template
but has ``<|im_start|>``/``<|im_end|>``; SFT and DPO refuse a tokenizer with neither.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from tokenizer.chat_template import CHATML_JINJA
from tokenizer.special_tokens import resolve_allowed, split_on_special
from tokenizer.template_chat import TemplateChat

HF_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
MAP_FILE = "special_tokens_map.json"
TEMPLATE_FILE = "chat_template.jinja"
NAMED = ("bos_token", "eos_token", "pad_token", "unk_token")


def _token_name(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value if isinstance(value, str) else None


def _template(config: dict, jinja: str | None, path: str) -> tuple[str | None, str]:
    """(template source, the file it came from) or (None, "")."""
    if jinja is not None:
        return jinja, os.path.join(path, TEMPLATE_FILE)
    where, source = os.path.join(path, CONFIG_FILE), config.get("chat_template")
    if isinstance(source, list):  # named templates: transformers uses "default" when none is asked for
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        if "default" not in named:
            raise ValueError(f"{where} has named chat templates ({', '.join(map(str, named))}) but no 'default'; "
                             f"name one 'default' in a copy of the tokenizer and pass it with --tokenizer_dir")
        source = named["default"]
    return (source, where) if isinstance(source, str) and source else (None, "")


class HFTokenizer:
    """See the module docstring. Build it with `from_pretrained(dir)`."""

    type = "hf"

    def __init__(self, files: dict[str, bytes], path: str):
        from tokenizers import Tokenizer

        self.path, self._files = path, dict(files)
        spec = json.loads(files[HF_FILE])
        config = json.loads(files.get(CONFIG_FILE, b"{}"))
        named = json.loads(files.get(MAP_FILE, b"{}"))
        added = spec.get("added_tokens") or []
        self.special_tokens = {t["content"]: int(t["id"]) for t in added if t.get("special")}
        self._special_ids = {i: t for t, i in self.special_tokens.items()}
        spec["post_processor"] = None  # it adds BOS and trims offsets; the chat template writes BOS itself
        self._full = Tokenizer.from_str(json.dumps(spec))
        spec["added_tokens"] = [t for t in added if not t.get("special")]
        self._plain = Tokenizer.from_str(json.dumps(spec))
        self.vocab_size = max(self._full.get_vocab(with_added_tokens=True).values()) + 1
        self.model_vocab_size = self.vocab_size
        self.template_tokens = {}  # the names a chat template reads: bos_token, eos_token, ...
        for name in NAMED:
            token = _token_name(config.get(name)) or _token_name(named.get(name))
            if token is not None:
                if self._full.token_to_id(token) is None:
                    raise ValueError(f"{path}: its {name} {token!r} is not in {HF_FILE}; the tokenizer files disagree")
                self.template_tokens[name] = token
        if "eos_token" not in self.template_tokens:
            raise ValueError(f"{path}: {CONFIG_FILE} names no eos_token, which documents and generation end with; "
                             f"add it to a copy of the tokenizer and pass that with --tokenizer_dir")
        jinja = files[TEMPLATE_FILE].decode("utf-8") if TEMPLATE_FILE in files else None
        self._template_source, self._template_where = _template(config, jinja, path)
        self._chat = None

    @classmethod
    def from_pretrained(cls, path: str) -> "HFTokenizer":
        """Load a directory holding tokenizer.json (+ tokenizer_config.json); a ValueError names what is wrong."""
        if not os.path.isfile(os.path.join(path, HF_FILE)):
            raise ValueError(f"{path!r} has no {HF_FILE} (a Hugging Face fast tokenizer); save one there with "
                             f"transformers' AutoTokenizer.from_pretrained(...).save_pretrained(DIR)")
        files = {}
        for name in (HF_FILE, CONFIG_FILE, MAP_FILE, TEMPLATE_FILE):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                with open(full, "rb") as f:
                    files[name] = f.read()
        try:
            return cls(files, path)
        except ValueError:
            raise
        except Exception as e:  # the Rust library raises plain Exception for a malformed file
            detail = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(f"{path}: the tokenizer files cannot be loaded ({type(e).__name__}: {detail})") from e

    def save_pretrained(self, path: str) -> list[str]:
        """Write the files it was loaded from, unchanged; returns their paths."""
        os.makedirs(path, exist_ok=True)
        written = []
        for name, data in self._files.items():
            out = os.path.join(path, name)
            tmp = f"{out}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, out)
            written.append(out)
        return written

    # ---- ids ----------------------------------------------------------------------------------------------------
    def _id(self, name: str) -> int:
        return self._full.token_to_id(self.template_tokens[name])

    @property
    def eos_id(self) -> int:
        return self._id("eos_token")

    @property
    def bos_id(self) -> int:
        return self._id("bos_token") if "bos_token" in self.template_tokens else self.eos_id

    @property
    def pad_id(self) -> int:
        return self._id("pad_token") if "pad_token" in self.template_tokens else self.eos_id

    @property
    def chat(self) -> TemplateChat:
        """The chat format (see the module docstring); compiled once."""
        if self._chat is None:
            if self._template_source is not None:
                self._chat = TemplateChat(self, self._template_source, self._template_where)
            elif "<|im_start|>" in self.special_tokens and "<|im_end|>" in self.special_tokens:
                self._chat = TemplateChat(self, CHATML_JINJA, "z2all ChatML",
                                          "z2all ChatML (the tokenizer has no chat_template of its own)")
            else:
                raise ValueError(f"the tokenizer {self.path} has no chat template ({TEMPLATE_FILE} or chat_template "
                                 f"in {CONFIG_FILE}) and no <|im_start|>/<|im_end|> tokens for z2all's ChatML; add a "
                                 f"chat_template to a copy of it and pass that with --tokenizer_dir")
        return self._chat

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path}, vocab_size={self.vocab_size})"

    # ---- encode / decode ----------------------------------------------------------------------------------------
    def encode(self, text: str, allowed_special: str | Iterable[str] = (), add_bos: bool = False,
               add_eos: bool = False) -> list[int]:
        """Encode one text; special-token strings in it stay text unless listed in ``allowed_special``."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}; use encode_batch for a list")
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        ids: list[int] = [self.bos_id] if add_bos else []
        for piece, is_special in split_on_special(text, allowed):
            if is_special:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self._plain.encode(piece, add_special_tokens=False).ids)
        return ids + ([self.eos_id] if add_eos else [])

    def encode_batch(self, texts: Sequence[str], allowed_special: str | Iterable[str] = (), add_bos: bool = False,
                     add_eos: bool = False) -> list[list[int]]:
        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise TypeError("encode_batch expects a list of str")
        if resolve_allowed(allowed_special, self.special_tokens):
            return [self.encode(t, allowed_special, add_bos, add_eos) for t in texts]
        head, tail = [self.bos_id] if add_bos else [], [self.eos_id] if add_eos else []
        return [head + e.ids + tail for e in self._plain.encode_batch(texts, add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character spans of `text` through the whole tokenizer (special-token strings become their ids):
        what transformers' encode(text, add_special_tokens=False) gives. For the chat template's own text only."""
        enc = self._full.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_as_text(self, piece: str) -> list[int]:
        """A special-token string found inside a message, as plain-text ids. Encoded after a newline that is then
        dropped, as transformers does, so a tokenizer that marks the start of a text does not mark it here."""
        newline = self._plain.encode("\n", add_special_tokens=False).ids
        ids = self._plain.encode("\n" + piece, add_special_tokens=False).ids
        return ids[len(newline):] if ids[:len(newline)] == newline else self._plain.encode(piece, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Decode ids; ids at or above vocab_size (the model's padding rows) decode to nothing."""
        out: list[str] = []
        run: list[int] = []
        for i in map(int, ids):
            if i < 0:
                raise ValueError(f"token id {i} is negative")
            if i in self._special_ids or i >= self.vocab_size:
                if run:
                    out.append(self._full.decode(run, skip_special_tokens=False))
                    run = []
                if i in self._special_ids and not skip_special_tokens:
                    out.append(self._special_ids[i])
            else:
                run.append(i)
        if run:
            out.append(self._full.decode(run, skip_special_tokens=False))
        return "".join(out)

    def id_to_token(self, i: int) -> str:
        return self._full.id_to_token(int(i))
