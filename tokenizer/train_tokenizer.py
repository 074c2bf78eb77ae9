"""Train a byte-level BPE (HF ``tokenizers``) or a sentencepiece BPE tokenizer from an iterable of documents.

``train_tokenizer(docs, vocab_size, type, out_dir)`` is the library entry point; the command line that reads
files is ``python -m data_preprocess.train_tokenizer`` (it lives there because reading files is the
data_preprocess layer's job, and tokenizer/ may import only utils/). The special tokens
of ``tokenizer.special_tokens`` are never learned: they are appended after the trained BBPE vocabulary, or are
sentencepiece control symbols. ``vocab_size`` counts them, and a result with fewer tokens than asked (too
little text) is an error, not a smaller tokenizer.

BBPE: 256 byte symbols to start, merges learned on chunks cut by ``PRE_SPLIT_PATTERN``:
- English contractions stay one chunk (``'s``, ``'ll``);
- a run of CJK/kana/hangul characters is one chunk, separate from Latin letters (no "中文English" merges);
- letters with an optional leading space or punctuation mark;
- digits in groups of at most 3 (``1234567`` -> ``123 456 7``), so numbers get a small, regular vocabulary;
- punctuation runs with an optional leading space and trailing newlines; whitespace runs, where the last
  space before a word stays with the word (`` return``).

Sentencepiece: BPE with ``byte_fallback`` (no unknown tokens), identity normalisation (so that the HF
conversion is exact), no dummy prefix, single digits, whitespace-only pieces allowed (code indentation) and
``"\\n"`` as a user-defined piece. The HF form (``tokenizer.json``) is converted here from the model's pieces:
a BPE model with the same vocabulary, merges ordered by the score of the merged piece, byte fallback, and
``" " -> "▁"`` as the normaliser.
"""
from __future__ import annotations

import io
import itertools
import os
from typing import Iterable, Iterator

from tokenizer.special_tokens import SPECIAL_TOKENS
from tokenizer.tokenizer import TOKENIZER_TYPES, Z2allTokenizer
from utils.progress import progress_bar

_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
PRE_SPLIT_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)"
    rf"|[{_CJK}]+"
    rf"|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}&&[^{_CJK}]]+"
    r"|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)
MIN_VOCAB = {"bbpe": 256 + len(SPECIAL_TOKENS) + 1, "sentencepiece": 256 + len(SPECIAL_TOKENS) + 3}
_SP_CHUNK_CHARS = 4000  # sentencepiece drops sentences above max_sentence_length bytes: cut long docs at lines


class _Feed:
    """The documents as the trainer consumes them: counted, and stopped after ``max_chars`` characters of text
    (0: no cap) to bound training time on huge inputs. On a terminal a bar shows the characters read (the trainers'
    own bars cannot: they are handed an iterator of unknown length and count up to a total of 0)."""

    def __init__(self, docs: Iterable[str], max_chars: int):
        self._docs, self._max_chars = docs, max_chars
        self.documents = self.chars = 0

    def __iter__(self) -> Iterator[str]:
        with progress_bar(total=self._max_chars or None, unit="char", unit_scale=True,
                          desc="tokenizer: reading text") as bar:
            for doc in self._docs:
                yield doc
                self.documents += 1
                self.chars += len(doc)
                bar.update(len(doc))
                if self._max_chars and self.chars >= self._max_chars:
                    return


def train_bbpe(docs: Iterable[str], vocab_size: int, show_progress: bool = True) -> Z2allTokenizer:
    """Train the byte-level BPE; the special tokens take the last ``len(SPECIAL_TOKENS)`` ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress, special_tokens=[])
    tok.train_from_iterator(docs, trainer=trainer)
    base = tok.get_vocab_size(with_added_tokens=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    special = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    assert list(special.values()) == list(range(base, base + len(SPECIAL_TOKENS))), special
    return Z2allTokenizer("bbpe", tok.to_str(), special)


def _sp_sentences(docs: Iterable[str]) -> Iterator[str]:
    """Cut documents into pieces of at most ~_SP_CHUNK_CHARS characters at line ends."""
    for doc in docs:
        if len(doc) <= _SP_CHUNK_CHARS:
            yield doc
            continue
        buf: list[str] = []
        size = 0
        for line in doc.splitlines(keepends=True):
            if size + len(line) > _SP_CHUNK_CHARS and buf:
                yield "".join(buf)
                buf, size = [], 0
            buf.append(line[:_SP_CHUNK_CHARS])
            size += len(buf[-1])
        if buf:
            yield "".join(buf)


def train_sentencepiece(docs: Iterable[str], vocab_size: int, max_sentences: int = 1_000_000) -> Z2allTokenizer:
    """Train sentencepiece BPE with byte fallback; the special tokens are control symbols 1..16.

    sentencepiece keeps its training sentences in memory: at most ``max_sentences`` chunks of up to
    ~4000 characters (a uniform sample when there are more), so use ``--max_chars`` on huge inputs.
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sp_sentences(docs), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, max_sentencepiece_length=16, max_sentence_length=4 * _SP_CHUNK_CHARS,
        input_sentence_size=max_sentences, shuffle_input_sentence=True, unk_id=0, bos_id=-1, eos_id=-1,
        pad_id=-1, control_symbols=list(SPECIAL_TOKENS), user_defined_symbols=["\n"], hard_vocab_limit=False,
        num_threads=os.cpu_count() or 1, minloglevel=2)
    proto = buf.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    special = {t: sp.piece_to_id(t) for t in SPECIAL_TOKENS}
    return Z2allTokenizer("sentencepiece", sentencepiece_to_hf_json(proto, special), special, proto)


def sentencepiece_to_hf_json(model_proto: bytes, special: dict[str, int]) -> str:
    """Build the HF ``tokenizer.json`` equivalent of a sentencepiece BPE model trained as above.

    1. The vocabulary is every piece with its sentencepiece id (so ids agree).
    2. A merge (left, right) exists for each split of a normal piece into two normal pieces.
    3. Merges are ranked by the merged piece's score (sentencepiece merges the highest-scoring pair
       first), ties by the ids of the two halves.
    4. Normaliser ``" " -> "▁"``, no pre-tokeniser, BPE with byte fallback; the decoder undoes it.
    """
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    n = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(n)}
    normal = {sp.id_to_piece(i): i for i in range(n)
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))}
    ranked = []
    for piece, pid in normal.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                ranked.append((-sp.get_score(pid), pid, normal[left], normal[right], left, right))
    ranked.sort()
    merges = [(left, right) for *_, left, right in ranked]
    unk = sp.id_to_piece(sp.unk_id())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    assert all(tok.token_to_id(t) == i for t, i in special.items())
    return tok.to_str()


def check_train_args(vocab_size: int, type: str) -> None:
    """Raise ValueError (naming the flag and the fix) for a tokenizer type or vocab size that cannot be trained."""
    if type not in TOKENIZER_TYPES:
        raise ValueError(f"--type must be one of {', '.join(TOKENIZER_TYPES)}, got {type!r}")
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB[type]:
        raise ValueError(f"--vocab_size must be an int >= {MIN_VOCAB[type]} for {type} (256 bytes + "
                         f"{len(SPECIAL_TOKENS)} special tokens + merges), got {vocab_size!r}")


def train_tokenizer(docs: Iterable[str], vocab_size: int, type: str, out_dir: str | None = None,
                    max_chars: int = 0, source: str = "the training text") -> Z2allTokenizer:
    """Train a tokenizer of exactly ``vocab_size`` tokens on ``docs``, save it to ``out_dir`` (if given), return it.

    ``source`` names the documents in error messages (the CLI passes its --input). Raises ValueError for bad
    arguments, for no documents, and when the text holds too few distinct merges for ``vocab_size``.
    """
    check_train_args(vocab_size, type)
    if max_chars < 0:
        raise ValueError(f"--max_chars must be >= 0 (0: no cap), got {max_chars}")
    if out_dir and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out_dir={out_dir} is a file, not a directory: pass a directory for the tokenizer")
    docs = iter(docs)
    first = next(docs, None)
    if first is None:
        raise ValueError(f"no documents to train on in {source}: check the input (and --text_field)")
    feed = _Feed(itertools.chain([first], docs), max_chars)
    tok = train_bbpe(feed, vocab_size, show_progress=False) if type == "bbpe" else train_sentencepiece(feed, vocab_size)
    if tok.vocab_size != vocab_size:
        raise ValueError(f"{source} ({feed.documents} documents, {feed.chars:,} characters) yields only "
                         f"{tok.vocab_size} of the {vocab_size} tokens asked: train on more text or pass a "
                         f"smaller --vocab_size (at most {tok.vocab_size})")
    if out_dir:
        tok.save_pretrained(out_dir)
    return tok
