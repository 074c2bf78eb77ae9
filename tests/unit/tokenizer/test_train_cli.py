"""Training entry points: the library on an iterable of texts, the CLI over the readers, argument checks."""
import json
import os

import pytest

from data_preprocess.train_tokenizer import main, train_from_files
from tests.unit.tokenizer.conftest import CORPUS
from tokenizer import Z2allTokenizer
from tokenizer.train_tokenizer import train_tokenizer


def test_cli_trains_from_a_directory(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "a.jsonl", "w", encoding="utf-8") as f:
        for doc in CORPUS:
            f.write(json.dumps({"title": "T", "content": doc}, ensure_ascii=False) + "\n")
        f.write("{broken\n")
    out = tmp_path / "tok"
    main([f"--input={data}", "--vocab_size=400", "--type=bbpe", f"--out_dir={out}",
          "--text_field=title+content", "--skip_bad_records"])
    printed = capsys.readouterr().out
    assert "skipped 1 bad records" in printed and '"vocab_size": 400' in printed
    tok = Z2allTokenizer.from_pretrained(str(out))
    assert tok.vocab_size == 400 and tok.model_vocab_size == 448
    assert os.path.isfile(out / "tokenizer_config.json")


def test_library_trains_on_texts_and_spm_is_sentencepiece(tmp_path):
    tok = train_tokenizer(iter(CORPUS), 400, "bbpe")
    assert tok.vocab_size == 400 and not os.listdir(tmp_path)
    (tmp_path / "a.txt").write_text("\n\n".join(CORPUS), encoding="utf-8")
    tok = train_from_files(str(tmp_path / "a.txt"), 400, "spm", str(tmp_path / "sp"), log=lambda m: None)
    assert tok.type == "sentencepiece" and Z2allTokenizer.from_pretrained(str(tmp_path / "sp")).vocab_size == 400


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--vocab_size must be an int >= "):
        train_from_files([str(tmp_path)], 100, "bbpe", str(tmp_path / "o"))
    with pytest.raises(ValueError, match="--type must be one of"):
        train_from_files([str(tmp_path)], 1000, "wordpiece", str(tmp_path / "o"))
    with pytest.raises(ValueError, match="no input files"):
        train_from_files([str(tmp_path)], 1000, "sentencepiece", str(tmp_path / "o"))


@pytest.mark.parametrize("kind", ["bbpe", "sentencepiece"])
def test_too_little_text_is_an_error_not_a_smaller_tokenizer(kind, tmp_path):
    with pytest.raises(ValueError, match="no documents to train on in my docs"):
        train_tokenizer(iter([]), 512, kind, str(tmp_path / "o"), source="my docs")
    with pytest.raises(ValueError, match=r"yields only \d+ of the 512 tokens asked.*at most"):
        train_tokenizer(iter(["hello world"] * 3), 512, kind, str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
