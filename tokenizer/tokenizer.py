"""Z2allTokenizer: one class over a byte-level BPE (HF ``tokenizers``) or a sentencepiece BPE model.

Safety: the encoding backend never knows the special tokens. For BBPE it is the Rust tokenizer with the
``added_tokens`` removed; for sentencepiece the special tokens are control symbols, which sentencepiece never
matches in text. So ``encode(user_text)`` turns a literal ``"<|im_end|>"`` into ordinary tokens, and special
ids appear only through ``allowed_special=...`` (or ``add_bos``/``add_eos``, or the chat template).

A saved directory holds:
- ``tokenizer.json``: the standard HF fast-tokenizer file (special tokens as ``added_tokens``), loadable by
  ``transformers.AutoTokenizer.from_pretrained(dir)`` as a ``PreTrainedTokenizerFast`` with no remote code.
  HF's behaviour differs in one documented way: HF matches added tokens inside text, so there the literal
  string ``"<|im_end|>"`` becomes the special id. Ordinary text gives the same ids as this class.
- ``tokenizer_config.json`` and ``special_tokens_map.json`` (HF metadata, including the ChatML chat template of
  ``tokenizer.chat_template``, which renders the ids of ``render_chat``, BOS included).
- ``z2all_tokenizer.json``: the tokenizer type and the special-token ids used by this class.
- ``tokenizer.model``: the sentencepiece model (sentencepiece tokenizers only; it is the one that encodes).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from tokenizer.chat_template import CHATML_JINJA, ChatMLChat
from tokenizer.special_tokens import (BOS_TOKEN, EOS_TOKEN, IM_END_TOKEN, IM_START_TOKEN, PAD_TOKEN,
                                      resolve_allowed, split_on_special)
from utils.fileio import atomic_write_bytes

TOKENIZER_TYPES = ("bbpe", "sentencepiece")
Z2ALL_FILE = "z2all_tokenizer.json"
HF_FILE = "tokenizer.json"
SP_FILE = "tokenizer.model"
VOCAB_MULTIPLE = 64
FORMAT_VERSION = 1


class _BBPEBackend:
    """The Rust tokenizer without added tokens: it can only produce ordinary ids."""

    def __init__(self, hf_json: str):
        from tokenizers import Tokenizer

        spec = json.loads(hf_json)
        spec["added_tokens"] = []
        spec["post_processor"] = None
        self.core = Tokenizer.from_str(json.dumps(spec))

    def encode(self, text: str) -> list[int]:
        return self.core.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.core.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.core.decode(ids, skip_special_tokens=False)

    def size(self) -> int:
        return self.core.get_vocab_size(with_added_tokens=False)


class _SentencePieceBackend:
    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int, num_threads=min(8, os.cpu_count() or 1))

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def size(self) -> int:
        return self.sp.get_piece_size()


class Z2allTokenizer:
    """Safe encode/decode with project-managed special tokens; see the module docstring."""

    def __init__(self, kind: str, hf_json: str, special_tokens: dict[str, int], sp_model_proto: bytes | None = None):
        if kind not in TOKENIZER_TYPES:
            raise ValueError(f"tokenizer type must be one of {', '.join(TOKENIZER_TYPES)}, got {kind!r}")
        for name in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IM_START_TOKEN, IM_END_TOKEN):
            if name not in special_tokens:
                raise ValueError(f"special token {name} is missing from {sorted(special_tokens)}; "
                                 "retrain the tokenizer with `python -m data_preprocess.train_tokenizer`")
        self.type = kind
        self._hf_json = hf_json
        self.special_tokens = dict(special_tokens)
        self._special_ids = {i: t for t, i in self.special_tokens.items()}
        if kind == "bbpe":
            self._backend = _BBPEBackend(hf_json)
            self.vocab_size = self._backend.size() + len(self.special_tokens)
        else:
            if sp_model_proto is None:
                raise ValueError("a sentencepiece tokenizer needs its model (tokenizer.model)")
            self._backend = _SentencePieceBackend(sp_model_proto)
            self.vocab_size = self._backend.size()
        bad = {t: i for t, i in self.special_tokens.items() if not 0 <= i < self.vocab_size}
        assert not bad, f"special ids outside the vocab of {self.vocab_size}: {bad}"
        self.model_vocab_size = -(-self.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    # ---- ids of the special tokens -------------------------------------------------------------------------
    @property
    def bos_id(self) -> int:
        return self.special_tokens[BOS_TOKEN]

    @property
    def eos_id(self) -> int:
        return self.special_tokens[EOS_TOKEN]

    @property
    def pad_id(self) -> int:
        return self.special_tokens[PAD_TOKEN]

    @property
    def im_start_id(self) -> int:
        return self.special_tokens[IM_START_TOKEN]

    @property
    def im_end_id(self) -> int:
        return self.special_tokens[IM_END_TOKEN]

    @property
    def chat(self) -> ChatMLChat:
        """The chat format (z2all ChatML, BOS first): render, generation prompt, DPO response, end-of-turn id."""
        return ChatMLChat(self)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Z2allTokenizer(type={self.type}, vocab_size={self.vocab_size}, "
                f"model_vocab_size={self.model_vocab_size})")

    # ---- encode / decode -----------------------------------------------------------------------------------
    def encode(self, text: str, allowed_special: str | Iterable[str] = (), add_bos: bool = False,
               add_eos: bool = False) -> list[int]:
        """Encode one text. Special-token strings in ``text`` stay ordinary text unless listed in
        ``allowed_special`` (a collection of token strings, or ``"all"``)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}; use encode_batch for a list")
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        ids: list[int] = [self.bos_id] if add_bos else []
        for piece, is_special in split_on_special(text, allowed):
            if is_special:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self._backend.encode(piece))
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], allowed_special: str | Iterable[str] = (), add_bos: bool = False,
                     add_eos: bool = False) -> list[list[int]]:
        """Encode many texts at once (the Rust/C++ batch path, multi-threaded); same ids as ``encode``."""
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"encode_batch expects a list of str, got elements of type {bad[0]}")
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        if allowed:
            return [self.encode(t, allowed, add_bos, add_eos) for t in texts]
        out = self._backend.encode_batch(texts) if texts else []
        if add_bos or add_eos:
            head, tail = [self.bos_id] if add_bos else [], [self.eos_id] if add_eos else []
            out = [head + ids + tail for ids in out]
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Decode ids. Special ids become their strings (or nothing with ``skip_special_tokens``); ids in the
        padding range [vocab_size, model_vocab_size) that an untrained model may sample decode to nothing."""
        ids = [int(i) for i in ids]
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if not 0 <= i < self.model_vocab_size:
                raise ValueError(f"token id {i} is outside [0, {self.model_vocab_size}) for this tokenizer; "
                                 "check that the model and tokenizer belong together")
            if i in self._special_ids or i >= self.vocab_size:
                if run:
                    out.append(self._backend.decode(run))
                    run = []
                if i in self._special_ids and not skip_special_tokens:
                    out.append(self._special_ids[i])
            else:
                run.append(i)
        if run:
            out.append(self._backend.decode(run))
        return "".join(out)

    def id_to_token(self, i: int) -> str:
        """The token string of one id (BBPE: its byte-level form; sentencepiece: its piece)."""
        if i in self._special_ids:
            return self._special_ids[i]
        if isinstance(self._backend, _BBPEBackend):
            return self._backend.core.id_to_token(i)
        return self._backend.sp.id_to_piece(i)

    # ---- persistence ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str) -> "Z2allTokenizer":
        """Load a directory written by ``save_pretrained`` (or by ``tokenizer.train_tokenizer``); a directory
        that is not one, or whose files are unreadable, is a ValueError naming the path and the fix."""
        meta_path = os.path.join(path, Z2ALL_FILE)
        if not os.path.isfile(meta_path):
            raise ValueError(f"{path!r} is not a z2all tokenizer directory (no {Z2ALL_FILE}); train one with "
                             "`python -m data_preprocess.train_tokenizer --input=... --out_dir=DIR`")
        kind, special = _read_meta(meta_path)
        names = [HF_FILE] + ([SP_FILE] if kind == "sentencepiece" else [])
        try:
            with open(os.path.join(path, HF_FILE), encoding="utf-8") as f:
                hf_json = f.read()
            proto = None
            if kind == "sentencepiece":
                with open(os.path.join(path, SP_FILE), "rb") as f:
                    proto = f.read()
            return cls(kind, hf_json, special, proto)
        except Exception as e:  # the Rust tokenizers library raises plain Exception for a malformed file
            detail = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(f"{path}: {' or '.join(names)} cannot be loaded ({detail}); {_RETRAIN}") from e

    def save_pretrained(self, path: str) -> list[str]:
        """Write the directory described in the module docstring; returns the written file paths."""
        os.makedirs(path, exist_ok=True)
        files = {
            HF_FILE: self._hf_json,
            Z2ALL_FILE: _dumps({"format_version": FORMAT_VERSION, "type": self.type,
                                "vocab_size": self.vocab_size, "model_vocab_size": self.model_vocab_size,
                                "special_tokens": self.special_tokens}),
            "special_tokens_map.json": _dumps(self._special_tokens_map()),
            "tokenizer_config.json": _dumps(self._tokenizer_config()),
        }
        written = []
        for name, text in files.items():
            written.append(_atomic_write(os.path.join(path, name), text.encode("utf-8")))
        if self.type == "sentencepiece":
            written.append(_atomic_write(os.path.join(path, SP_FILE), self._backend.model_proto))
        return written

    def _special_tokens_map(self) -> dict:
        named = {BOS_TOKEN, EOS_TOKEN, PAD_TOKEN}
        out = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN,
               "additional_special_tokens": [t for t in self.special_tokens if t not in named]}
        if self.type == "sentencepiece":
            out["unk_token"] = self._backend.sp.id_to_piece(self._backend.sp.unk_id())
        return out

    def _tokenizer_config(self) -> dict:
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000_000,
               "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False,
               "chat_template": CHATML_JINJA}
        cfg.update(self._special_tokens_map())
        return cfg


_RETRAIN = "copy the tokenizer directory again, or retrain it with `python -m data_preprocess.train_tokenizer`"


def _read_meta(meta_path: str) -> tuple[str, dict[str, int]]:
    """(type, special-token ids) of a z2all_tokenizer.json; a ValueError that names the file if it is unusable."""
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{meta_path}: not valid JSON ({e}); {_RETRAIN}") from e
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_path}: format_version {version} is not {FORMAT_VERSION}; {_RETRAIN}")
    special = meta.get("special_tokens")
    if meta.get("type") not in TOKENIZER_TYPES or not isinstance(special, dict) or not all(
            isinstance(i, int) for i in special.values()):
        raise ValueError(f"{meta_path}: needs \"type\" (one of {', '.join(TOKENIZER_TYPES)}) and \"special_tokens\" "
                         f"(token -> int id); {_RETRAIN}")
    return meta["type"], special


def _dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def _atomic_write(path: str, data: bytes) -> str:
    atomic_write_bytes(path, data, durable=False)  # a failed write (a full disk) leaves no temp file
    return path
