"""Pretokenize text into .bin shards: `python -m data_preprocess.pretokenize --input=FILES_OR_DIR
--tokenizer_dir=DIR --out_dir=DIR [--num_workers=N] [--text_field=text] [--skip_bad_records]
[--shard_tokens=N] [--overwrite]`.

Output (out_dir):
- shard_000000.bin, shard_000001.bin, ...: the dataset/format.py layout, each document as BOS ids EOS.
  Every shard but the last holds exactly --shard_tokens tokens, so shards are bounded and a document may
  continue in the next shard (training windows cross shard ends anyway). A shard's header counts the
  documents that end in it.
- tokenizer/: a copy of the tokenizer (a z2all one, or a Hugging Face one's files as they are), so the data
  directory says how to decode it (train.py can use it when --tokenizer_dir is not given).
- pretokenize.json: input files, tokenizer sizes, shard list and counts; written last, it marks a complete
  run. It holds no timings, so two runs on the same input write byte-identical directories.
The shards, the tokenizer and the summary are written into out_dir/.pretokenize.partial/ and moved into place
only when the whole input has been read and every file is complete, so a run that fails (a bad record, a full
disk) leaves out_dir as it was, earlier shards included, and no temporary file. A disk fault is one line (a
DiskFault: what, where, the fix) and exit status 2.

Determinism: the token stream is the documents in input order, each encoded independently, and shards
are cut at fixed token counts; workers only encode batches of documents, whose results are consumed in
submission order. Hence the output does not depend on --num_workers.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from data_preprocess.readers import TXT_MODES, ReadStats, iter_all_documents, list_input_files
from dataset.format import BinWriter, token_dtype
from tokenizer import HFTokenizer, Z2allTokenizer, load_tokenizer
from utils.cli import ArgumentParser, UserError, run_main
from utils.disk_faults import writing
from utils.progress import progress_bar

DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard
BATCH_DOCS = 64  # documents per task sent to a worker (small tasks balance the workers)
BATCH_CHARS = 1_000_000  # ... or fewer, so one task holds a bounded amount of text
SUMMARY_FILE = "pretokenize.json"
STAGE_DIR = ".pretokenize.partial"  # hidden: no *.bin glob of a reader sees the shards of an unfinished run

_WORKER_TOK: Z2allTokenizer | HFTokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    # One encode thread per worker process: the processes are the parallelism (no oversubscription).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    global _WORKER_TOK
    _WORKER_TOK = load_tokenizer(tokenizer_dir)


def encode_documents(tok: Z2allTokenizer | HFTokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """BOS+ids+EOS of each text, concatenated in the file's dtype, and the cumulative document ends."""
    ids = tok.encode_batch(texts, add_bos=True, add_eos=True)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=token_dtype(tok.vocab_size), count=int(lengths.sum()))
    return flat, np.cumsum(lengths)


def _worker_encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return encode_documents(_WORKER_TOK, texts)


def batch_documents(docs: Iterable[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def encoded_batches(batches: Iterator[list[str]], tokenizer_dir: str, num_workers: int,
                    tok: Z2allTokenizer | HFTokenizer) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(num_docs, tokens, doc_ends) per batch, in input order.

    num_workers <= 1 encodes in this process. Otherwise a pool of spawned processes encodes; at most
    2 * num_workers batches are in flight (Pool.imap would read the whole input ahead into memory).
    """
    if num_workers <= 1:
        for texts in batches:
            yield (len(texts), *encode_documents(tok, texts))
        return
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked tokenizer thread pools
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(tokenizer_dir,)) as pool:
        pending: collections.deque = collections.deque()
        for texts in batches:
            pending.append((len(texts), pool.apply_async(_worker_encode, (texts,))))
            if len(pending) >= 2 * num_workers:
                n, res = pending.popleft()
                yield (n, *res.get())
        while pending:
            n, res = pending.popleft()
            yield (n, *res.get())


class ShardSink:
    """Cut the token stream into shard_XXXXXX.bin files of exactly shard_tokens tokens (the last: fewer)."""

    def __init__(self, out_dir: Path, vocab_size: int, shard_tokens: int):
        self.out_dir, self.vocab_size, self.shard_tokens = out_dir, vocab_size, shard_tokens
        self.writer: BinWriter | None = None
        self.paths: list[Path] = []

    def add(self, tokens: np.ndarray, doc_ends: np.ndarray) -> None:
        pos = 0
        while pos < len(tokens):
            if self.writer is None:
                self.writer = BinWriter(self.out_dir / f"shard_{len(self.paths):06d}.bin", self.vocab_size)
            take = min(self.shard_tokens - self.writer.num_tokens, len(tokens) - pos)
            ended = int(np.searchsorted(doc_ends, pos + take, "right") - np.searchsorted(doc_ends, pos, "right"))
            self.writer.write(tokens[pos:pos + take], ended)
            pos += take
            if self.writer.num_tokens == self.shard_tokens:
                self._close()

    def _close(self) -> None:
        self.paths.append(self.writer.close())
        self.writer = None

    def finish(self) -> list[Path]:
        if self.writer is not None:
            self._close()
        return self.paths

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _data_files(out_dir: Path) -> list[Path]:
    """An earlier run's output in out_dir: shards, sample-index maps and the summary."""
    return sorted(out_dir.glob("*.bin")) + sorted(out_dir.glob("*sample_index_*")) + sorted(out_dir.glob(SUMMARY_FILE))


def check_out_dir(out_dir: Path, overwrite: bool) -> list[Path]:
    """The earlier run's data files that --overwrite will replace; refuse to mix with them otherwise."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir={out_dir} is a file, not a directory: pass a directory for the shards")
    old = _data_files(out_dir) if out_dir.is_dir() else []
    if old and not overwrite:
        raise UserError(f"{out_dir} already holds {len(old)} data file(s) (e.g. {old[0].name}): pass "
                        f"--overwrite to replace them, or choose an empty --out_dir")
    return old


@contextlib.contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """A private directory inside out_dir for the shards of this run; on any failure it goes, and so does
    every directory of the out_dir path that this run created, so a failed run leaves nothing behind."""
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = out_dir / STAGE_DIR
    shutil.rmtree(stage, ignore_errors=True)  # left by a run that was killed
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for d in created:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    stage.rmdir()


def _commit(out: Path, stage: Path, shards: list[Path], old: list[Path], tok: Z2allTokenizer | HFTokenizer,
            summary: dict) -> None:
    """Write the tokenizer and the summary into the stage (the last writes that need space), then move everything
    into place by renames, drop the earlier run's files that were not replaced, and publish the summary last."""
    tok.save_pretrained(str(stage / "tokenizer"))
    (stage / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    for path in shards:
        os.replace(path, out / path.name)
    tokenizer, aside = out / "tokenizer", out / f".tokenizer.old-{os.getpid()}"
    if tokenizer.exists():
        os.rename(tokenizer, aside)
    os.rename(stage / "tokenizer", tokenizer)
    shutil.rmtree(aside, ignore_errors=True)
    replaced = {p.name for p in shards} | {SUMMARY_FILE}
    for path in old:
        if path.name not in replaced:
            path.unlink(missing_ok=True)
    os.replace(stage / SUMMARY_FILE, out / SUMMARY_FILE)


def _encode_into(sink: ShardSink, batches: Iterator, progress: bool) -> tuple[int, int]:
    """Feed the encoded batches to the sink; returns (documents, tokens)."""
    num_docs = num_tokens = 0
    t0 = time.perf_counter()
    bar = progress_bar(enabled=progress, unit="doc", desc="pretokenize")
    try:
        for n, tokens, doc_ends in batches:
            sink.add(tokens, doc_ends)
            num_docs += n
            num_tokens += len(tokens)
            bar.update(n)
            bar.set_postfix_str(f"{num_tokens / max(time.perf_counter() - t0, 1e-9):,.0f} tokens/s", refresh=False)
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()
    return num_docs, num_tokens


def pretokenize(input: str | list[str], tokenizer_dir: str, out_dir: str, num_workers: int = 1,
                text_field: str = "text", skip_bad_records: bool = False,
                shard_tokens: int = DEFAULT_SHARD_TOKENS, overwrite: bool = False, progress: bool = True,
                txt_mode: str = "paragraph", log=print) -> dict:
    """Tokenize every document of `input` into out_dir (see the module docstring); returns the summary.

    Every check that needs no reading (flags, input paths, tokenizer, out_dir) runs before anything is
    written; a bad record found later fails the run with nothing left in out_dir (the shards are staged).
    """
    if shard_tokens < 1:
        raise UserError(f"--shard_tokens must be >= 1, got {shard_tokens}")
    if num_workers < 1:
        raise UserError(f"--num_workers must be >= 1, got {num_workers}")
    if txt_mode not in TXT_MODES:
        raise UserError(f"--txt_mode must be one of {', '.join(TXT_MODES)}, got {txt_mode!r}")
    files = list_input_files(input)
    tok = load_tokenizer(tokenizer_dir)
    out = Path(out_dir)
    old = check_out_dir(out, overwrite)
    stats = ReadStats()
    t0 = time.perf_counter()
    with writing("the pretokenized shards", out, fix="{action} or choose another --out_dir (it is as it was)"), \
            staged_output(out) as stage:
        docs = iter_all_documents(files, text_field, skip_bad_records, stats, txt_mode)
        sink = ShardSink(stage, tok.vocab_size, shard_tokens)
        batches = encoded_batches(batch_documents(docs), tokenizer_dir, num_workers, tok)
        num_docs, num_tokens = _encode_into(sink, batches, progress)
        shards = sink.finish()
        if num_docs == 0:
            raise UserError(f"no documents found in {', '.join(files)} (text field {text_field!r}; "
                            f"{stats.summary()}): check --input and --text_field")
        summary = {"input_files": files, "text_field": text_field, "documents": num_docs, "tokens": num_tokens,
                   "shards": [p.name for p in shards], "shard_tokens": shard_tokens,
                   "vocab_size": tok.vocab_size, "model_vocab_size": tok.model_vocab_size, "bos_id": tok.bos_id,
                   "eos_id": tok.eos_id, "bad_records": stats.bad_records, "empty_documents": stats.empty}
        _commit(out, stage, shards, old, tok, summary)
    elapsed = time.perf_counter() - t0
    log(f"pretokenize: {stats.summary()}; wrote {num_docs} documents, {num_tokens} tokens in {len(shards)} "
        f"shard(s) to {out} in {elapsed:.1f}s ({num_tokens / max(elapsed, 1e-9):,.0f} tokens/s, "
        f"{num_workers} worker(s))")
    return {**summary, "seconds": elapsed, "tokens_per_s": num_tokens / max(elapsed, 1e-9)}


ENSURE_VERSION = 1  # of ensure_pretokenized's staleness key


def ensure_pretokenized(inputs: str, tokenizer_dir: str, out_dir: str, num_workers: int = 1, progress: bool = False,
                        log=print) -> str:
    """Return out_dir holding `inputs` (raw text files or a directory of them) pretokenized with tokenizer_dir,
    building it first when it is missing or stale: the pretraining counterpart of the SFT path's
    pretokenize_sft.ensure_pretokenized, for a mix's raw sources (train.py --data_mix=NAME:WEIGHT:corpus.jsonl).

    1. The key: every input file's absolute path and fingerprint (size, mtime, sha256 of its first and last MiB, as
       the sample index checks its shards: a rewrite is seen without reading a TB corpus on every start) and the
       tokenizer's hash. out_dir/pretokenize.json holding the same key is reused.
    2. Else pretokenize into a hidden temporary directory beside out_dir, add the key to its pretokenize.json, and
       rename it into place (a stale out_dir is moved aside, then removed). A non-empty out_dir that is no build of
       this function is refused, never replaced.
    Several processes may call it at once; calling it on one rank before a barrier saves the work.
    """
    from data_preprocess.pretokenize_sft import tokenizer_hash
    from dataset.sample_index import fingerprint

    files = list_input_files(inputs)
    out = Path(out_dir)
    key = {"version": ENSURE_VERSION, "tokenizer_sha256": tokenizer_hash(tokenizer_dir), "text_field": "text",
           "inputs": [{**fingerprint(Path(f)), "path": os.path.abspath(f)} for f in files]}
    summary = out / SUMMARY_FILE
    old = None
    if summary.is_file():
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(summary.read_text())
    if isinstance(old, dict) and old.get("key") == key:
        return str(out)
    if not isinstance(old, dict) or "key" not in old:
        if out.is_dir() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not a pretokenized copy of {inputs}: move it away, or pretokenize "
                            f"{inputs} yourself (python -m data_preprocess.pretokenize --out_dir=DIR) and use DIR")
    log(f"pretokenize: {'rebuilding the stale' if out.exists() else 'building'} {out} from {len(files)} file(s)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        pretokenize(files, tokenizer_dir, str(tmp), num_workers=num_workers, progress=progress, log=log)
        meta = json.loads((tmp / SUMMARY_FILE).read_text())
        (tmp / SUMMARY_FILE).write_text(json.dumps({**meta, "key": key}, indent=1))
        stale = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}") if out.exists() else None
        if stale is not None:
            os.rename(out, stale)
        try:
            os.rename(tmp, out)
        except OSError:  # another process published it meanwhile: keep theirs when it has this key
            if json.loads(summary.read_text()).get("key") != key:
                raise
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="files or directories, comma-separated (.txt .json .jsonl .parquet)")
    p.add_argument("--tokenizer_dir", required=True, help="a z2all tokenizer dir (data_preprocess.train_tokenizer), or a Hugging Face one (tokenizer.json)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--num_workers", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--text_field", default="text", help="record field with the text (or title+content)")
    p.add_argument("--txt_mode", default="paragraph", choices=TXT_MODES, help="for .txt: one document per paragraph or line")
    p.add_argument("--skip_bad_records", action="store_true", help="skip and count malformed records")
    p.add_argument("--shard_tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard")
    p.add_argument("--overwrite", action="store_true", help="replace the .bin shards already in out_dir")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (there is none when stderr is not a terminal)")
    a = p.parse_args(argv)
    return pretokenize(a.input, a.tokenizer_dir, a.out_dir, a.num_workers, a.text_field, a.skip_bad_records,
                       a.shard_tokens, a.overwrite, not a.no_progress, a.txt_mode)


if __name__ == "__main__":
    sys.exit(run_main(main))
