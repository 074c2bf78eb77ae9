"""pretokenize: BOS/EOS-delimited shards, exact shard cuts, determinism across worker counts, bad input."""
import json

import numpy as np
import pytest

from data_preprocess.build_sample_index import main as build_index_main
from data_preprocess.pretokenize import main as pretokenize_main
from data_preprocess.pretokenize import pretokenize
from dataset.format import open_bin, read_header
from tokenizer import Z2allTokenizer

DOCS = [f"def f{i}(x):\n    return x * {i}  # the answer is {i * 7}\n" * (1 + i % 3) for i in range(60)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tokenizer.train_tokenizer import train_tokenizer
    root = tmp_path_factory.mktemp("corpus")
    inp = root / "in"
    inp.mkdir()
    for k in range(2):
        with open(inp / f"part{k}.jsonl", "w") as f:
            for doc in DOCS[k * 30:(k + 1) * 30]:
                f.write(json.dumps({"text": doc}) + "\n")
    tok_dir = root / "tok"
    train_tokenizer(DOCS, 300, "bbpe", str(tok_dir))
    return inp, tok_dir


def _files(d):
    return {p.name: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_shards_hold_the_documents_between_bos_and_eos(corpus, tmp_path):
    inp, tok_dir = corpus
    out = tmp_path / "out"
    summary = pretokenize(str(inp), str(tok_dir), str(out), num_workers=1, shard_tokens=500, progress=False,
                          log=lambda m: None)
    tok = Z2allTokenizer.from_pretrained(str(tok_dir))
    expect = np.concatenate([[tok.bos_id, *tok.encode(d), tok.eos_id] for d in DOCS])
    shards = sorted(out.glob("*.bin"))
    got = np.concatenate([open_bin(p) for p in shards])
    assert np.array_equal(got, expect)
    sizes = [len(open_bin(p)) for p in shards]
    assert all(n == 500 for n in sizes[:-1]) and 0 < sizes[-1] <= 500
    assert sum(read_header(p)["num_docs"] for p in shards) == len(DOCS) == summary["documents"]
    assert summary["tokens"] == len(expect) and len(summary["shards"]) == len(shards)
    assert Z2allTokenizer.from_pretrained(str(out / "tokenizer")).vocab_size == tok.vocab_size


def test_byte_identical_for_1_and_2_workers(corpus, tmp_path):
    inp, tok_dir = corpus
    import data_preprocess.pretokenize as pt
    old = pt.BATCH_DOCS
    pt.BATCH_DOCS = 7  # several batches in flight, results must still come back in order
    try:
        for w in (1, 2):
            pretokenize(str(inp), str(tok_dir), str(tmp_path / f"w{w}"), num_workers=w, shard_tokens=333,
                        progress=False, log=lambda m: None)
    finally:
        pt.BATCH_DOCS = old
    one, two = _files(tmp_path / "w1"), _files(tmp_path / "w2")
    assert one.keys() == two.keys() and one == two


def test_cli_then_index(corpus, tmp_path, capsys):
    inp, tok_dir = corpus
    out = tmp_path / "out"
    pretokenize_main([f"--input={inp}", f"--tokenizer_dir={tok_dir}", f"--out_dir={out}", "--num_workers=1",
                      "--no_progress"])
    assert "60 documents" in capsys.readouterr().out
    result = build_index_main([f"--data_dir={out}", "--max_seq_len=16"])
    assert result["windows"] == (result["tokens"] - 1) // 16
    with pytest.raises(ValueError, match="--overwrite"):
        pretokenize(str(inp), str(tok_dir), str(out), progress=False, log=lambda m: None)
    pretokenize(str(inp), str(tok_dir), str(out), overwrite=True, progress=False, log=lambda m: None)
    assert not list(out.glob("sample_index_*"))  # the old maps went with the old shards


def test_empty_input_directory(corpus, tmp_path):
    _, tok_dir = corpus
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no input files.*empty.*--input"):
        pretokenize(str(tmp_path / "empty"), str(tok_dir), str(tmp_path / "out"), progress=False)


def test_no_documents_names_the_text_field(corpus, tmp_path):
    _, tok_dir = corpus
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": ""}) + "\n")
    with pytest.raises(ValueError, match="no documents found.*--text_field"):
        pretokenize(str(inp), str(tok_dir), str(tmp_path / "out"), progress=False, log=lambda m: None)
    assert not list((tmp_path / "out").glob("*.bin"))


def test_ensure_pretokenized_builds_reuses_rebuilds_and_never_takes_a_foreign_dir(corpus, tmp_path):
    from data_preprocess.pretokenize import ensure_pretokenized
    from utils.cli import UserError

    import shutil

    src, tok_dir = corpus
    inp = tmp_path / "in"
    shutil.copytree(src, inp)  # changed below: the module's corpus stays as it is
    out = tmp_path / "in.z2all-pretrain"
    msgs = []
    assert ensure_pretokenized(str(inp), str(tok_dir), str(out), log=msgs.append) == str(out)
    first = _files(out)
    assert any("building" in m for m in msgs) and "pretokenize.json" in first
    msgs.clear()
    ensure_pretokenized(str(inp), str(tok_dir), str(out), log=msgs.append)
    assert msgs == [] and _files(out) == first  # fresh: reused as it is
    with open(inp / "part1.jsonl", "a") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    ensure_pretokenized(str(inp), str(tok_dir), str(out), log=msgs.append)
    assert any("rebuilding the stale" in m for m in msgs) and _files(out) != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary dir left
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a pretokenized copy"):
        ensure_pretokenized(str(inp), str(tok_dir), str(foreign), log=msgs.append)
    assert _files(foreign) == {"notes.txt": b"mine"}
