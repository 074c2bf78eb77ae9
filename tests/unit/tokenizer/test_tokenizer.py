"""Z2allTokenizer: safety of special tokens, round trips, batch path, persistence and HF interop."""
import os

import pytest

from tests.unit.tokenizer.conftest import CORPUS, SAMPLES
from tokenizer.train_tokenizer import train_bbpe
from tokenizer import SPECIAL_TOKENS, Z2allTokenizer


def test_plain_text_never_produces_special_ids(trained):
    tok, _ = trained
    special_ids = set(tok.special_tokens.values())
    for token in SPECIAL_TOKENS:
        ids = tok.encode(f"user says {token} here")
        assert not special_ids & set(ids), token
        assert tok.decode(ids) == f"user says {token} here"
    assert not special_ids & {i for ids in tok.encode_batch(["<|im_end|>", "<|endoftext|>x"]) for i in ids}
    assert tok.encode("a<|im_end|>b", allowed_special=("<|im_end|>",)).count(tok.im_end_id) == 1
    assert tok.encode("<|endoftext|>", allowed_special="all") == [tok.eos_id]
    assert tok.encode_batch(["x<|pad|>"], allowed_special="all")[0][-1] == tok.pad_id
    with pytest.raises(ValueError, match="unknown tokens"):
        tok.encode("x", allowed_special=("<|nope|>",))
    with pytest.raises(TypeError, match="wrap a single token"):
        tok.encode("x", allowed_special="<|im_end|>")


def test_round_trip_and_batch(trained):
    tok, _ = trained
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]
    assert tok.encode_batch(SAMPLES, add_bos=True, add_eos=True)[0] == [tok.bos_id] + tok.encode(SAMPLES[0]) + [tok.eos_id]
    ids = [tok.bos_id] + tok.encode("hi") + [tok.eos_id]
    assert tok.decode(ids) == "<|beginoftext|>hi<|endoftext|>"
    assert tok.decode(ids, skip_special_tokens=True) == "hi"
    with pytest.raises(TypeError):
        tok.encode(["not", "a", "str"])


def test_vocab_sizes_and_special_ids(trained):
    tok, _ = trained
    assert tok.vocab_size == len(tok) <= 420
    assert tok.model_vocab_size % 64 == 0 and 0 <= tok.model_vocab_size - tok.vocab_size < 64
    assert len({tok.bos_id, tok.eos_id, tok.pad_id, tok.im_start_id, tok.im_end_id}) == 5
    assert tok.decode([tok.vocab_size]) == ""  # padding rows of the embedding decode to nothing
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.model_vocab_size])


def test_save_and_load(trained, tmp_path):
    tok, saved = trained
    expected = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "z2all_tokenizer.json"}
    if tok.type == "sentencepiece":
        expected.add("tokenizer.model")
    assert expected <= set(os.listdir(saved))
    loaded = Z2allTokenizer.from_pretrained(saved)
    assert loaded.special_tokens == tok.special_tokens and loaded.vocab_size == tok.vocab_size
    assert loaded.encode_batch(SAMPLES) == tok.encode_batch(SAMPLES)
    loaded.save_pretrained(str(tmp_path))
    assert open(os.path.join(saved, "tokenizer.json")).read() == open(tmp_path / "tokenizer.json").read()
    with pytest.raises(ValueError, match="train_tokenizer"):
        Z2allTokenizer.from_pretrained(str(tmp_path / "missing"))


def test_transformers_autotokenizer_matches(trained):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok, saved = trained
    hf = AutoTokenizer.from_pretrained(saved)
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert hf.bos_token_id == tok.bos_id and hf.eos_token_id == tok.eos_id and hf.pad_token_id == tok.pad_id
    for text in SAMPLES:
        ids = hf.encode(text)
        assert ids == tok.encode(text), text
        assert hf.decode(ids) == text
    # HF matches added tokens inside text (documented difference); our class does not.
    assert hf.encode("<|im_end|>") == [tok.im_end_id] != tok.encode("<|im_end|>")


def test_bbpe_pre_split():
    # The pre-split regex belongs to the byte-level BPE only.
    tok = train_bbpe(iter(CORPUS), 420, show_progress=False)
    pieces = [tok.decode([i]) for i in tok.encode("1234567")]
    assert "".join(pieces) == "1234567" and all(len(p) <= 3 for p in pieces)
    for i in tok.encode("中文English混合"):
        piece = tok.decode([i])
        assert not (any("\u4e00" <= c <= "\u9fff" for c in piece) and any(c.isascii() for c in piece)), piece
