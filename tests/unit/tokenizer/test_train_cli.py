"""The training entry point: CLI over the readers, argument validation."""
import json
import os

import pytest

from tests.unit.tokenizer.conftest import CORPUS
from tokenizer import Z2allTokenizer
from tokenizer.train_tokenizer import main, train_tokenizer


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


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--vocab_size must be an int >= "):
        train_tokenizer([str(tmp_path)], 100, "bbpe", str(tmp_path / "o"))
    with pytest.raises(ValueError, match="--type must be one of"):
        train_tokenizer([str(tmp_path)], 1000, "wordpiece", str(tmp_path / "o"))
    with pytest.raises(ValueError, match="no input files"):
        train_tokenizer([str(tmp_path)], 1000, "sentencepiece", str(tmp_path / "o"))
