"""Demo corpus and demo SFT/DPO set: determinism, content, and the CLI (on a small copy of the stdlib)."""
import ast
import json
import os
import shutil
import sysconfig

import pytest

from data_preprocess.demo_corpus import (LONG_CHAT_TURNS, SFT_INSTRUCTION, build_demo_corpus, build_demo_sft_dpo,
                                         extract_prose, garble, group_into_chats,
                                         main, read_python_source)
from data_preprocess.readers import iter_all_documents

SAMPLE = '''#!/usr/bin/env python3
"""Module docstring about things."""
# A comment block that explains
# why the code is written this way.
X = """
# not a comment: inside a string
"""


def f(a, b):
    """Add two numbers and return the sum."""
    # tiny
    return a + b


def g():
    """Only a docstring here."""
'''


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """A few real stdlib files, a test directory, an unparseable file and the SAMPLE above."""
    std = sysconfig.get_paths()["stdlib"]
    root = tmp_path_factory.mktemp("stdlib")
    for rel in ("textwrap.py", "json/decoder.py", "json/__init__.py"):
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        shutil.copy(os.path.join(std, rel), root / rel)
    (root / "test").mkdir()
    (root / "test" / "test_x.py").write_text('def t():\n    """A test function docstring."""\n    pass\n')
    (root / "bad.py").write_text("def broken(:\n")
    (root / "sample.py").write_text(SAMPLE)
    return str(root)


def _read_all(d):
    return {name: open(os.path.join(d, name), "rb").read() for name in sorted(os.listdir(d))}


def test_extract_prose():
    prose = extract_prose(SAMPLE, ast.parse(SAMPLE))
    assert prose.split("\n\n") == ["Module docstring about things.",
                                   "A comment block that explains\nwhy the code is written this way.",
                                   "Add two numbers and return the sum.", "Only a docstring here."]


def test_corpus_is_deterministic_and_readable(small_root, tmp_path):
    a = build_demo_corpus(str(tmp_path / "a"), shard_bytes=20_000, show_progress=False, root=small_root)
    b = build_demo_corpus(str(tmp_path / "b"), shard_bytes=20_000, show_progress=False, root=small_root)
    assert len(a) >= 2 and _read_all(tmp_path / "a") == _read_all(tmp_path / "b")
    manifest = json.load(open(tmp_path / "a" / "manifest.json"))
    assert manifest["files_skipped"] == ["bad.py"] and manifest["code_documents"] == 5
    docs = list(iter_all_documents(a))
    assert len(docs) == manifest["documents"] == manifest["code_documents"] + manifest["prose_documents"]
    assert docs[0] == open(os.path.join(small_root, "json/__init__.py")).read()  # sorted path order
    # a rebuild with bigger shards removes the now stale shard files
    build_demo_corpus(str(tmp_path / "a"), shard_bytes=10 << 20, show_progress=False, root=small_root)
    assert sorted(os.listdir(tmp_path / "a")) == ["demo_00000.jsonl", "manifest.json"]


def test_sft_dpo_set(small_root, tmp_path):
    paths = build_demo_sft_dpo(str(tmp_path / "s"), root=small_root)
    again = build_demo_sft_dpo(str(tmp_path / "t"), root=small_root)
    assert _read_all(tmp_path / "s") == _read_all(tmp_path / "t") and set(paths) == set(again)
    sft = [json.loads(line) for line in open(paths["sft"])]
    dpo = [json.loads(line) for line in open(paths["dpo"])]
    turns = [(ex["messages"][k]["content"], ex["messages"][k + 1]["content"])
             for ex in sft for k in range(0, len(ex["messages"]), 2)]
    assert all([m["role"] for m in ex["messages"]] == ["user", "assistant"] * (len(ex["messages"]) // 2)
               for ex in sft)
    answers = {a for _, a in turns}
    assert len(turns) >= len(dpo) > 2
    assert "A test function docstring." not in answers  # test directories are left out
    assert "Only a docstring here." not in answers  # nothing left once the docstring is removed
    by_answer = {a: u for u, a in turns}
    code = by_answer["Add two numbers and return the sum."]
    assert code == SFT_INSTRUCTION + "def f(a, b):\n    # tiny\n    return a + b\n"
    for pair in dpo:
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert chosen != rejected and chosen in answers and pair["prompt"][0]["role"] == "user"
        # the rejected answer is the chosen one garbled: the same words per line, in another order
        assert [sorted(line.split(" ")) for line in chosen.split("\n")] == \
            [sorted(line.split(" ")) for line in rejected.split("\n")]


def test_chats_have_a_long_tail_and_cover_every_task():
    chats = group_into_chats(5000)
    assert [i for c in chats for i in c] == list(range(5000))  # consecutive, nothing lost or repeated
    sizes = [len(c) for c in chats]
    single = sum(k == 1 for k in sizes) / len(sizes)
    assert 0.7 < single < 0.9 and max(sizes) == LONG_CHAT_TURNS[1] and min(k for k in sizes if k > 1) >= 4
    assert group_into_chats(5000) == chats  # deterministic


def test_garble_keeps_the_words_of_each_line():
    text = "Return the sum of a and b.\n\nRaises ValueError  on overflow."
    out = garble(text, seed=3)
    assert out != text and garble(text, seed=3) == out
    assert [sorted(x.split(" ")) for x in out.split("\n")] == [sorted(x.split(" ")) for x in text.split("\n")]


def test_cli(small_root, tmp_path):
    main([f"--out_dir={tmp_path / 'c'}", f"--root={small_root}", f"--sft_dpo_out_dir={tmp_path / 'd'}"])
    assert os.path.isfile(tmp_path / "c" / "manifest.json") and os.path.isfile(tmp_path / "d" / "sft.jsonl")
    with pytest.raises(ValueError, match="--shard_mb"):
        main([f"--out_dir={tmp_path / 'c'}", "--shard_mb=0"])
    assert read_python_source(os.path.join(small_root, "bad.py")) is None
