"""The CLIs other than train.py under utils/cli.py's contract, run as a user runs them (`python -m ...`).

Each bad input must exit 2 with exactly one stderr line, ``error: ...``, that names the problem (the file, the
flag) and the fix; no traceback; and leave no partial output (the output path is exactly as it was before).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from dataset.format import make_header
from tests.conftest import ROOT
from tests.support.forked import run_module_forked

PRE = "data_preprocess.pretokenize"
TOK = "data_preprocess.train_tokenizer"
IDX = "data_preprocess.build_sample_index"
CORPUS = "data_preprocess.demo_corpus"
DEMO = "data_preprocess.demo"
TRAIN = "train"
EXPORT = "model.hf.export_hf"
IMPORT = "model.hf.import_hf"
SFT = "data_preprocess.pretokenize_sft"
DOCS = [f"def f{i}(x):\n    return x * {i}  # the answer is {i * 7}\n" * (1 + i % 3) for i in range(40)]


def _jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


GOOD = _jsonl({"text": d} for d in DOCS)


@dataclass
class Case:
    id: str
    module: str
    args: list[str]  # formatted with d= this case's directory, tok= a good tokenizer, bin= good shards
    expect: tuple[str, ...]  # substrings of the error line
    files: dict[str, str | bytes] = field(default_factory=dict)  # written under d before the run
    copies: dict[str, str] = field(default_factory=dict)  # d/<key> <- copy of the shared "tok" or "bin"
    out: str = "out"  # under d: must be exactly as before the run (absent stays absent)
    may_add: tuple[str, ...] = ()  # complete, valid files under out that the failed run may leave


def _pre(*args: str, out: str = "{d}/out") -> list[str]:
    return [*args, "--tokenizer_dir={tok}", f"--out_dir={out}", "--num_workers=1"]


def _tok(*args: str) -> list[str]:
    return [*args, "--out_dir={d}/out"]


_MIX_RUN = ["--out_dir={d}/out", "--vocab_size=320", "--max_iters=1"]
_SHORT_BIN = make_header(300, 100, 1).tobytes() + np.arange(100, dtype=np.uint16).tobytes()  # 100 tokens: no window

CASES = [
    # ---- pretokenize: input files
    Case("jsonl_malformed", PRE, _pre("--input={d}/bad.jsonl"), ("bad.jsonl: line 2", "--skip_bad_records"),
         {"bad.jsonl": '{"text": "a"}\n{"text": "b",}\n'}),
    Case("json_malformed", PRE, _pre("--input={d}/bad.json"), ("bad.json", "invalid JSON", "--skip_bad_records"),
         {"bad.json": '[{"text": "a"}, {"text": '}),
    Case("json_not_array", PRE, _pre("--input={d}/obj.json"), ("obj.json", "top-level array", ".jsonl"),
         {"obj.json": '{"text": "a"}'}),
    Case("parquet_garbage", PRE, _pre("--input={d}/x.parquet"), ("x.parquet", "not a readable parquet", "remove it"),
         {"x.parquet": b"this is not parquet at all"}),
    Case("txt_not_utf8", PRE, _pre("--input={d}/bad.txt"), ("bad.txt: line 2", "UTF-8", "--skip_bad_records"),
         {"bad.txt": b"fine text\n\xff\xfe broken\n"}),
    Case("jsonl_not_utf8", PRE, _pre("--input={d}/bad.jsonl"), ("bad.jsonl: line 1", "utf-8"),
         {"bad.jsonl": b'{"text": "\xff"}\n'}),
    Case("text_field_missing", PRE, _pre("--input={d}/a.jsonl"), ("a.jsonl: line 1", "'text' is missing",
                                                                 "--text_field"),
         {"a.jsonl": _jsonl([{"body": "x"}])}),
    Case("text_field_not_str", PRE, _pre("--input={d}/a.jsonl", "--text_field=n"), ("a.jsonl", "'n' is a int"),
         {"a.jsonl": _jsonl([{"n": 3}])}),
    Case("input_missing", PRE, _pre("--input={d}/nope.jsonl"), ("nope.jsonl", "does not exist", "--input")),
    Case("input_dir_empty", PRE, _pre("--input={d}/empty"), ("no input files", "empty", "check --input"),
         {"empty/.keep": ""}),
    Case("input_suffix", PRE, _pre("--input={d}/a.csv"), ("a.csv", "unsupported suffix"), {"a.csv": "x,y\n"}),
    Case("no_documents", PRE, _pre("--input={d}/a.jsonl"), ("no documents found", "a.jsonl", "--text_field"),
         {"a.jsonl": _jsonl([{"text": ""}, {"text": "  "}])}),
    Case("bad_record_after_full_shards", PRE, _pre("--input={d}/a.jsonl", "--shard_tokens=16"),
         ("a.jsonl: line 41", "--skip_bad_records"), {"a.jsonl": GOOD + "{oops\n"}),
    # ---- pretokenize: tokenizer and output directory
    Case("tokenizer_dir_not_one", PRE, [*_pre("--input={d}/a.jsonl"), "--tokenizer_dir={d}/empty"],
         ("empty", "holds no tokenizer", "train_tokenizer --input"),
         {"a.jsonl": GOOD, "empty/.keep": ""}),
    Case("tokenizer_meta_corrupt", PRE, [*_pre("--input={d}/a.jsonl"), "--tokenizer_dir={d}/tok"],
         ("z2all_tokenizer.json: not valid JSON", "retrain"),
         {"a.jsonl": GOOD, "tok/z2all_tokenizer.json": '{"format_version": 1, '}, {"tok": "tok"}),
    Case("tokenizer_json_corrupt", PRE, [*_pre("--input={d}/a.jsonl"), "--tokenizer_dir={d}/tok"],
         ("tok: tokenizer.json cannot be loaded", "retrain"), {"a.jsonl": GOOD, "tok/tokenizer.json": "{}"},
         {"tok": "tok"}),
    Case("existing_shards", PRE, _pre("--input={d}/a.jsonl"), ("already holds 1 data file", "--overwrite"),
         {"a.jsonl": GOOD, "out/shard_000000.bin": b"old shard"}),
    Case("overwrite_fails_keeps_old_shards", PRE, [*_pre("--input={d}/a.jsonl", "--shard_tokens=16"), "--overwrite"],
         ("a.jsonl: line 41",), {"a.jsonl": GOOD + "[1]\n", "out/shard_000000.bin": b"old shard"}),
    Case("out_dir_is_a_file", PRE, _pre("--input={d}/a.jsonl"), ("out", "is a file", "directory"),
         {"a.jsonl": GOOD, "out": "x"}),
    # ---- pretokenize: flags
    Case("shard_tokens_zero", PRE, _pre("--input={d}/a.jsonl", "--shard_tokens=0"), ("--shard_tokens must be >= 1",),
         {"a.jsonl": GOOD}),
    Case("num_workers_zero", PRE, [*_pre("--input={d}/a.jsonl"), "--num_workers=0"], ("--num_workers must be >= 1",),
         {"a.jsonl": GOOD}),
    Case("txt_mode_choice", PRE, _pre("--input={d}/a.jsonl", "--txt_mode=word"), ("--txt_mode", "invalid choice",
                                                                                  "--help"), {"a.jsonl": GOOD}),
    Case("int_flag_not_int", PRE, _pre("--input={d}/a.jsonl", "--shard_tokens=lots"), ("--shard_tokens",
                                                                                       "invalid int value")),
    Case("unknown_flag", PRE, _pre("--input={d}/a.jsonl", "--bogus=1"), ("unrecognized arguments: --bogus=1",)),
    Case("required_flag", PRE, ["--tokenizer_dir={tok}", "--out_dir={d}/out"], ("required", "--input")),
    # ---- train_tokenizer
    Case("tok_empty_dir", TOK, _tok("--input={d}/empty", "--vocab_size=512"), ("no input files", "empty"),
         {"empty/.keep": ""}),
    Case("tok_vocab_too_small", TOK, _tok("--input={d}/a.jsonl", "--vocab_size=100"),
         ("--vocab_size must be an int >= 273", "got 100"), {"a.jsonl": GOOD}),
    Case("tok_no_documents", TOK, _tok("--input={d}/a.jsonl", "--vocab_size=512"),
         ("no documents to train on", "a.jsonl", "--text_field"), {"a.jsonl": _jsonl([{"text": ""}])}),
    Case("tok_too_little_text", TOK, _tok("--input={d}/a.txt", "--vocab_size=512"),
         ("a.txt", "yields only", "of the 512 tokens asked", "smaller --vocab_size"), {"a.txt": "hello world\n"}),
    Case("tok_spm_too_little_text", TOK, _tok("--input={d}/a.txt", "--vocab_size=512", "--type=spm"),
         ("a.txt", "yields only", "of the 512 tokens asked"), {"a.txt": "hello world\n"}),
    Case("tok_malformed_jsonl", TOK, _tok("--input={d}/a.jsonl", "--vocab_size=300"),
         ("a.jsonl: line 41", "--skip_bad_records"), {"a.jsonl": GOOD + "{oops\n"}),
    Case("tok_out_dir_is_a_file", TOK, _tok("--input={d}/a.jsonl", "--vocab_size=300"), ("out", "is a file"),
         {"a.jsonl": GOOD, "out": "x"}),
    Case("tok_type_choice", TOK, _tok("--input={d}/a.jsonl", "--vocab_size=300", "--type=wordpiece"),
         ("--type", "invalid choice")),
    # ---- build_sample_index
    Case("idx_seq_longer_than_data", IDX, ["--data_dir={d}/bin", "--max_seq_len=100000"],
         ("max_seq_len=100000", "lower --max_seq_len"), copies={"bin": "bin"}, out="bin"),
    Case("idx_data_dir_missing", IDX, ["--data_dir={d}/nope", "--max_seq_len=16"], ("nope", "does not exist")),
    Case("idx_no_shards", IDX, ["--data_dir={d}/bin", "--max_seq_len=16"], ("has no .bin shards", "pretokenize"),
         {"bin/readme.txt": "x"}, out="bin"),
    Case("idx_garbage_shard", IDX, ["--data_dir={d}/bin", "--max_seq_len=16"], ("x.bin", "z2all header"),
         {"bin/x.bin": b"\x01" * 4096}, out="bin"),
    # the map is built before the vocab check (which reads the range scans cached in its sidecar): it is a
    # complete, valid map of this data, reused by the next run, so it may stay
    Case("idx_vocab_too_small", IDX, ["--data_dir={d}/bin", "--max_seq_len=16", "--vocab_size=10"],
         ("shard_000000.bin", "vocab_size"), copies={"bin": "bin"}, out="bin",
         may_add=("sample_index_16.npy", "sample_index_16.json")),
    Case("idx_seq_zero", IDX, ["--data_dir={d}/bin", "--max_seq_len=0"], ("--max_seq_len must be >= 1",),
         copies={"bin": "bin"}, out="bin"),
    # ---- demo_corpus and demo
    Case("corpus_shard_mb_zero", CORPUS, ["--out_dir={d}/out", "--shard_mb=0"], ("--shard_mb must be >= 1",)),
    Case("corpus_root_missing", CORPUS, ["--out_dir={d}/out", "--root={d}/nope"], ("nope", "is not a directory")),
    Case("corpus_out_dir_is_a_file", CORPUS, ["--out_dir={d}/out", "--root={d}/src"], ("--out_dir", "is a file"),
         {"out": "x", "src/m.py": "x = 1\n"}),
    Case("demo_vocab_too_small", DEMO, ["--cache_dir={d}/out", "--vocab_size=10"], ("--vocab_size must be",)),
    # ---- train.py (config and data mistakes; nothing may appear in --out_dir)
    Case("train_unknown_key", TRAIN, ["--batchsize=3", "--out_dir={d}/out"], ("'batchsize'", "--batch_size")),
    Case("train_bad_int", TRAIN, ["--batch_size=eight", "--out_dir={d}/out"], ("--batch_size='eight'", "valid int")),
    Case("train_nan_float", TRAIN, ["--learning_rate=nan", "--out_dir={d}/out"], ("finite float",)),
    Case("train_zero_heads", TRAIN, ["--n_heads=0", "--out_dir={d}/out"], ("--n_heads must be positive",)),
    Case("train_zero_kv_heads", TRAIN, ["--n_kv_heads=0", "--out_dir={d}/out"], ("--n_kv_heads must be positive",)),
    Case("train_zero_multiple_of", TRAIN, ["--multiple_of=0", "--out_dir={d}/out"], ("--multiple_of must be",)),
    Case("train_heads_do_not_divide", TRAIN, ["--n_heads=3", "--out_dir={d}/out"], ("not divisible by n_heads",)),
    Case("train_bad_choice", TRAIN, ["--dtype=fp8", "--out_dir={d}/out"], ("--dtype='fp8'", "not one of")),
    Case("train_data_dir_missing", TRAIN, ["--data_dir={d}/nope", "--out_dir={d}/out"],
         ("--data_dir=", "does not exist", "data_preprocess.pretokenize")),
    Case("train_data_dir_is_a_file", TRAIN, ["--data_dir={d}/x.bin", "--out_dir={d}/out"], ("is a file",),
         {"x.bin": b"\0" * 16}),
    Case("train_resume_without_run", TRAIN, ["--resume", "--out_dir={d}/out"], ("cannot resume", "without --resume")),
    Case("train_resume_and_init_from", TRAIN, ["--resume", "--init_from={d}", "--out_dir={d}/out"],
         ("exclude each other",)),
    Case("train_init_from_not_a_run", TRAIN, ["--init_from={d}/nope", "--out_dir={d}/out"], ("nope", "not a directory")),
    Case("train_two_config_files", TRAIN, ["a.py", "b.py", "--out_dir={d}/out"], ("two config files",)),
    Case("train_config_file_missing", TRAIN, ["{d}/nope.py", "--out_dir={d}/out"], ("nope.py", "does not exist")),
    Case("train_config_file_broken", TRAIN, ["{d}/c.py", "--out_dir={d}/out"], ("c.py", "failed to execute"),
         {"c.py": "batch_size = = 2\n"}),
    Case("train_resume_step_without_resume", TRAIN, ["--resume_step=3", "--out_dir={d}/out"], ("add --resume",)),
    Case("train_bad_fault", TRAIN, ["--fault_injection=boom", "--max_iters=1", "--data_dir={bin}",
                                    "--out_dir={d}/out", "--vocab_size=320", "--tokenizer_dir={tok}"],
         ("--fault_injection='boom'",)),
    # ---- train.py on a mix (--data_mix): each mistake one line, nothing in --out_dir
    *[Case(f"mix_{cid}", TRAIN, [f"--data_mix={mix}", *extra, *_MIX_RUN], expect, files)
      for cid, mix, extra, expect, files in (
        ("negative_weight", "a:-0.5:{bin},b:1:{d}/b", [], ("source 'a' has weight -0.5", "must be > 0"), {}),
        ("zero_weight", "a:0:{bin},b:1:{d}/b", [], ("source 'a' has weight 0", "must be > 0"), {}),
        ("missing_source", "a:1:{bin},b:1:{d}/nope", [], ("source 'b'", "nope does not exist"), {}),
        ("empty_source", "a:1:{bin},b:1:{d}/empty", [], ("source 'b'", "is empty", "no .bin shards"),
         {"empty/.keep": ""}),
        ("different_tokenizers", "a:1:{bin},b:1:{bin2}", [], ("different tokenizers", "tokenizer"), {}),
        ("duplicate_name", "a:1:{bin},a:2:{d}/b", [], ("source name 'a' appears twice",), {}),
        ("no_window", "a:1:{bin},b:1:{d}/short", [], ("source 'b'", "max_seq_len=256 needs windows of 257 tokens",
                                                      "lower --max_seq_len"), {"short/x.bin": _SHORT_BIN}),
        ("stages_out_of_order", "a:1:{bin}", ["--data_stages=9:a:1;5:a:2"], ("stage at step 5 is out of order",),
         {}),
        ("for_sft", "a:1:{bin}", ["--task_type=sft", "--memory_check=false"],
         ("--data_mix mixes pretraining corpora", "--data_dir"), {}),
    )],
    # ---- HF export and import, SFT pretokenize
    Case("export_not_a_run", EXPORT, ["--ckpt={d}/src", "--out_dir={d}/out"], ("no checkpoint found", "src"),
         {"src/readme.txt": "x"}),
    Case("export_out_dir_not_an_export", EXPORT, ["--ckpt={d}/src", "--out_dir={d}/out"], ("no checkpoint found",),
         {"src/readme.txt": "x", "out/notes.txt": "mine"}),
    Case("export_missing_flag", EXPORT, ["--ckpt={d}/src"], ("--out_dir",)),
    Case("import_no_config", IMPORT, ["--hf_dir={d}/hf", "--out_dir={d}/out"], ("config.json", "does not exist"),
         {"hf/readme.txt": "x"}),
    Case("import_unsupported", IMPORT, ["--hf_dir={d}/hf", "--out_dir={d}/out"], ("gpt2",),
         {"hf/config.json": '{"model_type": "gpt2"}'}),
    Case("sft_malformed_record", SFT, ["--input={d}/a.jsonl", "--tokenizer_dir={tok}", "--out_dir={d}/out"],
         ("a.jsonl", "line 1"), {"a.jsonl": '{"messages": [{"role": "user", "content": 3}]}\n'}),
    Case("sft_roles_do_not_alternate", SFT, ["--input={d}/a.jsonl", "--tokenizer_dir={tok}", "--out_dir={d}/out"],
         ("a.jsonl", "line 1"), {"a.jsonl": '{"messages": [{"role": "assistant", "content": "x"}]}\n'}),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """A good tokenizer and good shards, made once in this process."""
    from data_preprocess.pretokenize import pretokenize
    from tokenizer.train_tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("cli_shared")
    (root / "a.jsonl").write_text(GOOD)
    train_tokenizer(DOCS, 300, "bbpe", str(root / "tok"))
    pretokenize(str(root / "a.jsonl"), str(root / "tok"), str(root / "bin"), progress=False, log=lambda m: None)
    train_tokenizer(DOCS[::-1], 290, "bbpe", str(root / "tok2"))  # another tokenizer, for the mix of two
    pretokenize(str(root / "a.jsonl"), str(root / "tok2"), str(root / "bin2"), progress=False, log=lambda m: None)
    return {"tok": root / "tok", "bin": root / "bin", "bin2": root / "bin2"}


def run_cli(module: str, args: list[str], debug: bool = False, forked: bool = True) -> subprocess.CompletedProcess:
    """The CLI in a child process: forked from this one (tests/support/forked.py: the module's __main__ as
    `python -m` runs it, without the interpreter's start) for the many cases, or a fresh interpreter (forked=False)
    for the tests of the entry point itself."""
    env = {k: v for k, v in os.environ.items() if k != "Z2ALL_DEBUG"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if debug:
        env["Z2ALL_DEBUG"] = "1"
    if forked:
        return run_module_forked(module, args, env, ROOT)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every file under path (or path itself) with its bytes; None when it does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _prepare(case: Case, d: Path, shared: dict[str, Path]) -> list[str]:
    for dest, key in case.copies.items():
        shutil.copytree(shared[key], d / dest)
    for name, content in case.files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return [a.format(d=d, tok=shared["tok"], bin=shared["bin"], bin2=shared["bin2"]) for a in case.args]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, shared):
    args = _prepare(case, tmp_path, shared)
    before = snapshot(tmp_path / case.out)
    proc = run_cli(case.module, args)
    shown = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for part in case.expect:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    after = snapshot(tmp_path / case.out)
    if after is not None:
        after = {k: v for k, v in after.items() if k not in case.may_add}
    assert after == before, "the failed run changed its output path"


@pytest.mark.slow
def test_debug_env_gives_the_traceback(tmp_path, shared):
    case = CASES[0]
    proc = run_cli(case.module, _prepare(case, tmp_path, shared), debug=True, forked=False)
    assert proc.returncode not in (0, 2) and "Traceback" in proc.stderr and "bad.jsonl: line 2" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("module", [PRE, TOK, IDX, CORPUS, DEMO])
def test_help(module):
    proc = run_cli(module, ["--help"], forked=False)
    assert proc.returncode == 0 and "usage:" in proc.stdout and not proc.stderr, proc.stderr


@pytest.mark.slow
def test_good_run_still_exits_0(tmp_path, shared):
    (tmp_path / "a.jsonl").write_text(GOOD)
    args = [a.format(d=tmp_path, tok=shared["tok"]) for a in _pre("--input={d}/a.jsonl")]
    proc = run_cli(PRE, args)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pretokenize.json", "shard_000000.bin",
                                                                    "tokenizer"]
