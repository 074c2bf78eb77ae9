"""The demo data of `python train.py`: built once from the Python standard library, reused afterwards.

`ensure_demo_data(cache_dir="data/demo", vocab_size=4096)` makes, under cache_dir:
    corpus/     the demo corpus (data_preprocess.demo_corpus.build_demo_corpus), jsonl with "text"
    sft/        the demo SFT/DPO set (data_preprocess.demo_corpus.build_demo_sft_dpo)
    tokenizer/  a byte-level BPE tokenizer trained on (a prefix of) the corpus
    bin/        the corpus pretokenized into .bin shards (with its own tokenizer/ copy)
    mix/        code/ and prose/: the two halves of the corpus pretokenized apart, the demo mix's sources
                (`ensure_demo_mix`, built on first use of configs/mix_demo.py or a demo:code / demo:prose source)
    DEMO_COMPLETE  written last (JSON: version, vocab_size, counts); while it is missing or does not match
                the request, the tokenizer and the shards are rebuilt, so a crash mid-build never leaves a
                half-built set in use. The corpus has its own marker and is kept across vocab changes.
A file lock on cache_dir/.lock lets several processes (e.g. torchrun ranks) call this at once: one builds,
the others wait and then reuse. A disk fault is one line (a DiskFault naming cache_dir; exit 2 from train.py):
every stage writes through temporary files that a failure removes, and the stages already complete are kept. CLI: `python -m data_preprocess.demo [--cache_dir=DIR] [--vocab_size=N]`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tokenizer.train_tokenizer import check_train_args
from utils.cli import ArgumentParser, run_main
from utils.disk_faults import writing
from utils.fileio import atomic_write_text

DEMO_VERSION = 1
CORPUS_VERSION = 2  # of the corpus stage; 2: every record names its kind (code | prose), for the demo mix
MARKER = "DEMO_COMPLETE"
CORPUS_MARKER = "CORPUS_COMPLETE"
MIX_MARKER = "MIX_COMPLETE"
MIX_VERSION = 1
MIX_KINDS = ("code", "prose")
TOKENIZER_MAX_CHARS = 8_000_000  # BPE merges settle on a few MB of text; training on all of it only costs time


@dataclass(frozen=True)
class DemoData:
    data_dir: str
    tokenizer_dir: str
    sft_dir: str


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1), durable=False)


@contextlib.contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # no flock (Windows): single-process use only
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_complete(cache: Path, vocab_size: int) -> bool:
    meta = _read_json(cache / MARKER)
    return bool(meta) and meta.get("version") == DEMO_VERSION and meta.get("vocab_size") == vocab_size


def _sft_is_current(cache: Path) -> bool:
    from data_preprocess.demo_corpus import SFT_DPO_VERSION

    meta = _read_json(cache / "sft" / "sft_dpo_manifest.json")
    return bool(meta) and meta.get("version") == SFT_DPO_VERSION


def _ensure_sft(cache: Path, log) -> None:
    """(Re)build sft/ when its manifest (written last) is missing or from another version of the demo set;
    its pretokenized copies are keyed by the files' sha256, so they follow."""
    if _sft_is_current(cache):
        return
    from data_preprocess.demo_corpus import build_demo_sft_dpo

    t0 = time.perf_counter()
    log(f"demo data: building the SFT/DPO set into {cache / 'sft'}")
    build_demo_sft_dpo(str(cache / "sft"))
    log(f"demo data: SFT/DPO set done ({time.perf_counter() - t0:.1f}s)")


def _corpus(cache: Path, log) -> list[str]:
    from data_preprocess.demo_corpus import build_demo_corpus

    marker = cache / CORPUS_MARKER
    meta = _read_json(marker)
    if meta and meta.get("version") == CORPUS_VERSION and all(os.path.isfile(f) for f in meta["files"]):
        return meta["files"]
    t0 = time.perf_counter()
    log(f"demo data: building the corpus from the Python standard library into {cache / 'corpus'}")
    files = [str(f) for f in build_demo_corpus(str(cache / "corpus"))]
    _write_json(marker, {"version": CORPUS_VERSION, "files": files})
    log(f"demo data: corpus done ({len(files)} files, {time.perf_counter() - t0:.1f}s)")
    return files


def _build(cache: Path, vocab_size: int, num_workers: int, log) -> dict:
    from data_preprocess.pretokenize import pretokenize
    from data_preprocess.train_tokenizer import train_from_files

    t0 = time.perf_counter()
    files = _corpus(cache, log)
    t1 = time.perf_counter()
    log(f"demo data: training a {vocab_size}-token byte-level BPE tokenizer on up to "
        f"{TOKENIZER_MAX_CHARS:,} characters")
    train_from_files(files, vocab_size, "bbpe", str(cache / "tokenizer"), max_chars=TOKENIZER_MAX_CHARS, log=log)
    t2 = time.perf_counter()
    log(f"demo data: tokenizer done ({t2 - t1:.1f}s); pretokenizing into {cache / 'bin'}")
    summary = pretokenize(files, str(cache / "tokenizer"), str(cache / "bin"), num_workers=num_workers,
                          overwrite=True, log=log)
    t3 = time.perf_counter()
    return {"version": DEMO_VERSION, "vocab_size": vocab_size, "documents": summary["documents"],
            "tokens": summary["tokens"], "seconds": {"corpus": round(t1 - t0, 1), "tokenizer": round(t2 - t1, 1),
                                                     "pretokenize": round(t3 - t2, 1)}}


def ensure_demo_data(cache_dir: str = "data/demo", vocab_size: int = 4096, num_workers: int | None = None,
                     log=print) -> DemoData:
    """Build the demo corpus, tokenizer and shards on first use (see the module docstring); reuse afterwards.

    1. Complete and matching marker: return at once. 2. Else take the lock, check again (another process
    may have just built it), drop the marker, build the missing stages, and write the marker last. 3. The SFT/DPO
    set has its own version (demo_corpus.SFT_DPO_VERSION): a stale one is rebuilt alone.
    """
    check_train_args(vocab_size, "bbpe")  # before minutes of corpus building
    cache = Path(cache_dir)
    paths = DemoData(str(cache / "bin"), str(cache / "tokenizer"), str(cache / "sft"))
    if _is_complete(cache, vocab_size) and _sft_is_current(cache):
        return paths
    with writing("the demo data", cache, fix="{action} (it takes about 200 MB) or train on your own --data_dir; "
                 "the stages already built are kept"):
        cache.mkdir(parents=True, exist_ok=True)
        with _file_lock(cache / ".lock"):
            if not _is_complete(cache, vocab_size):
                (cache / MARKER).unlink(missing_ok=True)
                workers = num_workers if num_workers is not None else min(2, os.cpu_count() or 1)
                t0 = time.perf_counter()
                meta = _build(cache, vocab_size, workers, log)
                _write_json(cache / MARKER, meta)
                log(f"demo data: ready in {time.perf_counter() - t0:.1f}s ({meta['documents']} documents, "
                    f"{meta['tokens']} tokens) at {cache}")
            _ensure_sft(cache, log)
    return paths


def _mix_is_complete(cache: Path, vocab_size: int) -> bool:
    meta = _read_json(cache / "mix" / MIX_MARKER)
    return bool(meta) and meta.get("version") == MIX_VERSION and meta.get("vocab_size") == vocab_size


def _kind_and_text(record) -> tuple[str, str]:
    if not (isinstance(record, dict) and record.get("kind") in MIX_KINDS and isinstance(record.get("text"), str)):
        raise ValueError(f"a demo corpus record needs a text and a kind in {MIX_KINDS}")
    return record["kind"], record["text"]


def _build_mix(cache: Path, tokenizer_dir: str, num_workers: int, log) -> dict:
    """Split the corpus by kind into two jsonl files, pretokenize each into mix/<kind>/, then drop the split."""
    from data_preprocess.pretokenize import pretokenize
    from data_preprocess.readers import iter_records

    mix = cache / "mix"
    split = mix / ".split"
    shutil.rmtree(split, ignore_errors=True)
    split.mkdir(parents=True)
    counts = {}
    try:
        outs = {kind: open(split / f"{kind}.jsonl", "w", encoding="utf-8") for kind in MIX_KINDS}
        with contextlib.ExitStack() as stack:
            for f in outs.values():
                stack.enter_context(f)
            for path in _corpus(cache, log):  # a corpus of CORPUS_VERSION: each record names its kind
                for kind, text in iter_records(path, _kind_and_text):
                    outs[kind].write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        for kind in MIX_KINDS:
            log(f"demo data: pretokenizing the {kind} half of the corpus into {mix / kind}")
            summary = pretokenize(str(split / f"{kind}.jsonl"), tokenizer_dir, str(mix / kind),
                                  num_workers=num_workers, overwrite=True, progress=False, log=log)
            counts[kind] = {"documents": summary["documents"], "tokens": summary["tokens"]}
    finally:
        shutil.rmtree(split, ignore_errors=True)
    return counts


def ensure_demo_mix(cache_dir: str = "data/demo", vocab_size: int = 4096, num_workers: int | None = None,
                    log=print) -> dict[str, str]:
    """The demo mix's two sources, {"code": DIR, "prose": DIR}: the demo corpus's source files and its docstrings
    and comments, each pretokenized on its own (with the demo tokenizer) under cache_dir/mix/, built on first use.

    The demo data comes first (ensure_demo_data: the tokenizer); mix/MIX_COMPLETE is written last and the build
    holds the same lock, so a crash mid-build is rebuilt and concurrent callers build once.
    """
    demo = ensure_demo_data(cache_dir, vocab_size, num_workers, log)
    cache = Path(cache_dir)
    paths = {kind: str(cache / "mix" / kind) for kind in MIX_KINDS}
    if _mix_is_complete(cache, vocab_size):
        return paths
    with _file_lock(cache / ".lock"):
        if not _mix_is_complete(cache, vocab_size):
            (cache / "mix" / MIX_MARKER).unlink(missing_ok=True)
            t0 = time.perf_counter()
            workers = num_workers if num_workers is not None else min(2, os.cpu_count() or 1)
            counts = _build_mix(cache, demo.tokenizer_dir, workers, log)
            _write_json(cache / "mix" / MIX_MARKER, {"version": MIX_VERSION, "vocab_size": vocab_size,
                                                     "sources": counts})
            sizes = ", ".join(f"{kind} {c['tokens']:,} tokens" for kind, c in counts.items())
            log(f"demo data: the mix's sources are ready in {time.perf_counter() - t0:.1f}s ({sizes})")
    return paths


def main(argv: list[str] | None = None) -> DemoData:
    p = ArgumentParser(description="Build (or reuse) the demo data of `python train.py`.")
    p.add_argument("--cache_dir", default="data/demo")
    p.add_argument("--vocab_size", type=int, default=4096)
    p.add_argument("--num_workers", type=int, default=None, help="pretokenize workers (default: min(2, cores))")
    a = p.parse_args(argv)
    data = ensure_demo_data(a.cache_dir, a.vocab_size, a.num_workers)
    print(data)
    return data


if __name__ == "__main__":
    sys.exit(run_main(main))
