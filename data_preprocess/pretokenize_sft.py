"""Pretokenize SFT conversations or DPO preference pairs: `python -m data_preprocess.pretokenize_sft
--input=FILES_OR_DIR --tokenizer_dir=DIR --out_dir=DIR [--task=sft|dpo] [--max_seq_len=N] [--format=auto]
[--max_prompt_len=N] [--truncation_mode=keep_end|keep_start] [--num_workers=N] [--skip_bad_records]`.

Input: .jsonl/.json/.parquet records in the formats of data_preprocess.chat_formats, read through
data_preprocess.readers.iter_records (a malformed record fails with its file and line, or is skipped and
counted with --skip_bad_records). Every record is rendered with the tokenizer's chat format (`tok.chat`): z2all's
ChatML (tokenizer.chat_template.render_chat, BOS first) for a z2all tokenizer, the tokenizer's own template for a
Hugging Face one (tokenizer/template_chat.py); either way the ids its chat_template gives through transformers.

Output (out_dir, published whole: built in a hidden temporary directory beside it, then renamed into place,
so a crash never leaves a half dataset under the final name, and a failed build, a full disk included, removes
the temporary directory and keeps an earlier build; a disk fault is one line and exit status 2):
- input_ids.bin: the dataset/format.py layout; the segments back to back, no separators. SFT: one segment per
  conversation. DPO: three per pair, in order: the prompt (with the generation prompt
  ``<|im_start|>assistant\\n``), the chosen response, the rejected response.
- loss_mask.u8: one uint8 per token of input_ids.bin, 1 where the token is trained on (SFT: assistant contents
  and their end-of-turn token, <|im_end|> in ChatML; DPO: the responses and theirs), 0 elsewhere.
- offsets.npy: int64 (num_segments + 1,), segment i is tokens [offsets[i], offsets[i + 1]).
- tokenizer/: the tokenizer (a z2all one saved afresh, so its chat_template is the current one).
- manifest.json: the staleness key (format version, task, options, input names/sizes/sha256, tokenizer hash, the
  chat format's fingerprint: z2all's ChatML, or the tokenizer's own template and the token names it reads),
  the input mtimes and the counts. It holds no timings and no worker count.

Truncation (SFT, encode_sft): conversations longer than max_seq_len keep their longest prefix of whole turns
that ends with an assistant turn; when even the first reply does not fit, the tokens are cut at max_seq_len;
an example left with no trained token is dropped and counted, never written. DPO (encode_dpo): see there.

Determinism: records are parsed in input order in this process and cut into fixed batches; workers only encode
batches, whose results are written in submission order, so the output is byte-identical for any
--num_workers. ``ensure_pretokenized`` is the library entry point (the trainer calls it).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from data_preprocess.chat_formats import SFT_FORMATS, Preference, to_messages, to_preference
from data_preprocess.readers import ReadStats, iter_records, list_input_files
from dataset.format import BinWriter
from dataset.sft import IDS_FILE, MANIFEST_FILE, MASK_FILE, OFFSETS_FILE, SFT_FORMAT_VERSION, TASKS
from tokenizer import HFTokenizer, Z2allTokenizer, load_tokenizer
from utils.cli import ArgumentParser, run_main
from utils.disk_faults import writing
from utils.fileio import sha256_file
from utils.progress import progress_bar

TRUNCATION_MODES = ("keep_end", "keep_start")
BATCH_RECORDS = 256  # records per task sent to a worker (fixed: the output must not depend on the workers)
# the files that decide the ids; a Hugging Face tokenizer's names (BOS, EOS, PAD) and template are in its config
_TOKENIZER_FILES = ("tokenizer.json", "z2all_tokenizer.json", "tokenizer.model")
_HF_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclasses.dataclass(frozen=True)
class SFTOptions:
    """What the tokens depend on besides the inputs and the tokenizer (all of it goes into the manifest key)."""

    task: str = "sft"  # sft | dpo
    max_seq_len: int = 2048  # tokens per example (SFT) or per prompt + response (DPO)
    format: str = "auto"  # SFT record format: auto | messages | sharegpt | alpaca
    max_prompt_len: int = 0  # DPO: prompt budget when a pair is too long; 0 = max_seq_len // 2
    truncation_mode: str = "keep_end"  # DPO prompt cut: keep_end (drop its start) | keep_start (drop its end)

    def resolved(self) -> "SFTOptions":
        if self.task not in TASKS:
            raise ValueError(f"--task={self.task!r} is not one of {', '.join(TASKS)}")
        if self.max_seq_len < 2:
            raise ValueError(f"--max_seq_len must be >= 2, got {self.max_seq_len}")
        if self.format not in SFT_FORMATS:
            raise ValueError(f"--format={self.format!r} is not one of {', '.join(SFT_FORMATS)}")
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ValueError(f"--truncation_mode={self.truncation_mode!r} is not one of {', '.join(TRUNCATION_MODES)}")
        prompt_len = self.max_prompt_len or self.max_seq_len // 2
        if not 1 <= prompt_len < self.max_seq_len:
            raise ValueError(f"--max_prompt_len={self.max_prompt_len} must be in [1, --max_seq_len="
                             f"{self.max_seq_len}) so every response keeps a token")
        if self.task == "sft":  # the DPO options do not change SFT tokens: keep them out of the key
            return dataclasses.replace(self, max_prompt_len=0, truncation_mode="")
        return dataclasses.replace(self, format="", max_prompt_len=prompt_len)


# ---- encoding ------------------------------------------------------------------------------------------------

def encode_sft(tok: Z2allTokenizer | HFTokenizer, messages: list[dict], max_seq_len: int
               ) -> tuple[list[int], list[int], str]:
    """(ids, mask, status) of one conversation; status is "ok", "truncated" or "dropped".

    1. Render it (tok.chat.render: the turns, mask 1 on the replies). If it fits in max_seq_len: "ok".
    2. Else keep the longest prefix of whole turns that fits and ends with an assistant turn: "truncated".
    3. Else (the first reply alone runs past max_seq_len) cut at max_seq_len tokens: "truncated", as long as
       a trained token survives (position >= 1: something must predict it).
    4. Else "dropped" (with empty ids): the caller counts it and writes nothing.
    """
    enc = tok.chat.render(messages)
    ids, mask = enc.input_ids, enc.loss_mask
    if len(ids) <= max_seq_len:
        return ids, mask, "ok"
    whole = [end for m, end in zip(messages, enc.turn_ends) if m["role"] == "assistant" and end <= max_seq_len]
    cut = max(whole) if whole else max_seq_len
    if not any(mask[1:cut]):
        return [], [], "dropped"
    return ids[:cut], mask[:cut], "truncated"


def _cut_prompt(prompt: list[int], keep: int, mode: str, bos_id: int) -> list[int]:
    """The prompt cut to `keep` tokens: keep_start keeps its head; keep_end keeps BOS and then its tail."""
    if mode == "keep_start":
        return prompt[:keep]
    head = prompt[:1] if prompt[0] == bos_id else []
    tail = keep - len(head)
    return head + (prompt[len(prompt) - tail:] if tail > 0 else [])


def encode_dpo(tok: Z2allTokenizer | HFTokenizer, pair: Preference, max_seq_len: int, max_prompt_len: int,
               truncation_mode: str) -> tuple[list[tuple[list[int], list[int]]], bool]:
    """([(prompt ids, mask), (chosen ids, mask), (rejected ids, mask)], truncated) of one pair.

    1. Prompt: tok.chat.generation_prompt (ChatML: BOS, the turns, ``<|im_start|>assistant\\n``), mask 0.
       Response: tok.chat.response (ChatML: encode(content) + <|im_end|> + "\\n"), mask 1 up to the end-of-turn
       token: the tokens a model served with the HF template generates after that prompt.
    2. If the prompt plus the longer response exceeds max_seq_len, the prompt is cut to the larger of
       max_prompt_len and max_seq_len - the longer response (truncation_mode: keep_end drops its start but
       keeps BOS, keep_start drops its end); then each response is cut on the right to the room left, which
       is >= 1 token as max_prompt_len < max_seq_len, so no pair is ever dropped.
    """
    prompt = tok.chat.generation_prompt(pair.prompt)
    responses = [tok.chat.response(pair.prompt, r) for r in (pair.chosen, pair.rejected)]
    longest = max(len(ids) for ids, _ in responses)
    truncated = len(prompt) + longest > max_seq_len
    if truncated:
        keep = max(max_prompt_len, max_seq_len - longest)
        if len(prompt) > keep:
            prompt = _cut_prompt(prompt, keep, truncation_mode, tok.bos_id)
        room = max_seq_len - len(prompt)
        responses = [(ids[:room], mask[:room]) for ids, mask in responses]
    return [(prompt, [0] * len(prompt))] + responses, truncated


@dataclasses.dataclass
class EncodedBatch:
    ids: np.ndarray  # int64, the segments back to back
    mask: np.ndarray  # uint8, same length
    lengths: list[int]  # per segment
    label_tokens: int = 0  # trained tokens that something precedes (SFT: not at position 0)
    truncated: int = 0
    dropped: int = 0


class _Encoder:
    """Encodes one batch of parsed records (message lists or Preference pairs) into an EncodedBatch."""

    def __init__(self, tokenizer_dir: str, opts: SFTOptions):
        self.tok = load_tokenizer(tokenizer_dir)
        self.opts = opts

    def __call__(self, items: list) -> EncodedBatch:
        o, segments = self.opts, []
        out = EncodedBatch(np.empty(0, np.int64), np.empty(0, np.uint8), [])
        for item in items:
            if o.task == "sft":
                ids, mask, status = encode_sft(self.tok, item, o.max_seq_len)
                out.truncated += status == "truncated"
                out.dropped += status == "dropped"
                if status != "dropped":
                    segments.append((ids, mask))
                    out.label_tokens += sum(mask[1:])
            else:
                segs, truncated = encode_dpo(self.tok, item, o.max_seq_len, o.max_prompt_len, o.truncation_mode)
                out.truncated += truncated
                segments.extend(segs)
                out.label_tokens += sum(segs[1][1]) + sum(segs[2][1])  # a response follows its prompt
        out.lengths = [len(ids) for ids, _ in segments]
        if segments:
            out.ids = np.concatenate([np.asarray(ids, np.int64) for ids, _ in segments])
            out.mask = np.concatenate([np.asarray(mask, np.uint8) for _, mask in segments])
        return out


_WORKER: _Encoder | None = None


def _init_worker(tokenizer_dir: str, opts: SFTOptions) -> None:
    # One encode thread per worker process: the processes are the parallelism (no oversubscription).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    global _WORKER
    _WORKER = _Encoder(tokenizer_dir, opts)


def _worker_encode(items: list) -> EncodedBatch:
    return _WORKER(items)


def encode_batches(batches: Iterator[list], tokenizer_dir: str, opts: SFTOptions,
                   num_workers: int) -> Iterator[EncodedBatch]:
    """Encoded batches in submission order; at most 2 * num_workers in flight in a spawned pool."""
    if num_workers <= 1:
        yield from map(_Encoder(tokenizer_dir, opts), batches)
        return
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked tokenizer thread pools
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(tokenizer_dir, opts)) as pool:
        pending: collections.deque = collections.deque()
        for items in batches:
            pending.append(pool.apply_async(_worker_encode, (items,)))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ---- reading ------------------------------------------------------------------------------------------------

def _parser(opts: SFTOptions):
    if opts.task == "dpo":
        return to_preference
    fmt = opts.format
    return lambda record: to_messages(record, fmt)


def record_batches(files: list[str], opts: SFTOptions, skip_bad_records: bool, stats: ReadStats,
                   bar: tqdm) -> Iterator[list]:
    parse, batch = _parser(opts), []
    for path in files:
        for item in iter_records(path, parse, skip_bad_records, stats):
            batch.append(item)
            bar.update(1)
            if len(batch) == BATCH_RECORDS:
                yield batch
                batch = []
    if batch:
        yield batch


# ---- manifest and staleness ---------------------------------------------------------------------------------

def tokenizer_hash(tokenizer_dir: str) -> str:
    """sha256 over the files that decide the ids: a z2all tokenizer's (not its tokenizer_config.json: the template
    lives in code), and a Hugging Face tokenizer's config files too (its names and its template)."""
    h = hashlib.sha256()
    hf = not os.path.isfile(os.path.join(tokenizer_dir, "z2all_tokenizer.json"))
    for name in _TOKENIZER_FILES + (_HF_TOKENIZER_FILES if hf else ()):
        path = os.path.join(tokenizer_dir, name)
        if os.path.isfile(path):
            h.update(f"{name}:{sha256_file(path)}\n".encode())
    return h.hexdigest()


def manifest_key(files: list[str], tokenizer_dir: str, opts: SFTOptions) -> dict:
    """Everything the output depends on; a directory whose manifest holds another key is stale."""
    inputs = [{"path": os.path.abspath(f), "size": os.path.getsize(f), "sha256": sha256_file(f)} for f in files]
    return {"format_version": SFT_FORMAT_VERSION, "options": dataclasses.asdict(opts), "inputs": inputs,
            "tokenizer_sha256": tokenizer_hash(tokenizer_dir),
            "chat_format_sha256": load_tokenizer(tokenizer_dir).chat.fingerprint}


def read_manifest(out_dir: str | os.PathLike) -> dict | None:
    try:
        return json.loads((Path(out_dir) / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---- writing ------------------------------------------------------------------------------------------------

class _SegmentWriter:
    """input_ids.bin (BinWriter), loss_mask.u8 and the segment lengths of one build directory."""

    def __init__(self, out: Path, vocab_size: int, segments_per_example: int):
        self.out, self.per_example = out, segments_per_example
        self.ids = BinWriter(out / IDS_FILE, vocab_size)
        self.mask = open(out / MASK_FILE, "wb")
        self.lengths: list[int] = []
        self.label_tokens = 0

    def add(self, batch: EncodedBatch) -> None:
        self.ids.write(batch.ids, num_docs=len(batch.lengths) // self.per_example)
        self.mask.write(batch.mask.tobytes())
        self.lengths.extend(batch.lengths)
        self.label_tokens += batch.label_tokens

    def finish(self) -> int:
        self.ids.close()
        self.mask.flush()
        os.fsync(self.mask.fileno())
        self.mask.close()
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        np.save(self.out / OFFSETS_FILE, offsets)
        return int(offsets[-1])

    def abort(self) -> None:
        self.ids.abort()
        try:
            self.mask.close()
        except OSError:  # flushing into the disk that just filled up; the directory is removed anyway
            pass


def _write_dataset(tmp: Path, files: list[str], tokenizer_dir: str, opts: SFTOptions, num_workers: int,
                   skip_bad_records: bool, progress: bool) -> dict:
    """Build every file of the output in `tmp`; returns the counts."""
    tok = load_tokenizer(tokenizer_dir)
    per_example = 1 if opts.task == "sft" else 3
    writer = _SegmentWriter(tmp, tok.vocab_size, per_example)
    stats, truncated, dropped = ReadStats(), 0, 0
    bar = progress_bar(enabled=progress, unit="rec", desc=f"pretokenize {opts.task}")
    try:
        batches = record_batches(files, opts, skip_bad_records, stats, bar)
        for batch in encode_batches(batches, tokenizer_dir, opts, num_workers):
            writer.add(batch)
            truncated, dropped = truncated + batch.truncated, dropped + batch.dropped
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    tokens = writer.finish()
    examples = len(writer.lengths) // per_example
    if examples == 0:
        raise ValueError(f"no usable {opts.task} records in {', '.join(files)} ({stats.summary()}, {dropped} "
                         f"dropped as too long): check --input, --format and --max_seq_len")
    tok.save_pretrained(str(tmp / "tokenizer"))
    return {"records": stats.documents, "examples": examples, "tokens": tokens, "label_tokens": writer.label_tokens,
            "truncated": truncated, "dropped_too_long": dropped, "bad_records": stats.bad_records,
            "vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "bos_id": tok.bos_id, "turn_end_id": tok.chat.turn_end_id}


def _publish(tmp: Path, out: Path, key: dict) -> None:
    """Rename the finished tmp dir onto out; a stale out is moved aside first and then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        # another process published out meanwhile: keep theirs when it is what we built
        if (read_manifest(out) or {}).get("key") != key:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_out_dir(out: Path, inputs: str | list[str], files: list[str]) -> None:
    """out_dir must be neither inside an input directory (its files would become inputs) nor hold an input
    (a rebuild replaces out_dir whole)."""
    items = inputs.split(",") if isinstance(inputs, str) else list(inputs)
    dirs = [Path(s.strip()).resolve() for s in items if s.strip() and os.path.isdir(s.strip())]
    inside = [str(d) for d in dirs if out.resolve().is_relative_to(d)]
    inside += [f for f in files if Path(f).resolve().is_relative_to(out.resolve())]
    if inside:
        raise ValueError(f"--out_dir={out} overlaps the input {inside[0]}: choose an out_dir outside the inputs")


def ensure_pretokenized(inputs: str | list[str], tokenizer_dir: str, out_dir: str, task: str = "sft",
                        max_seq_len: int = 2048, format: str = "auto", max_prompt_len: int = 0,
                        truncation_mode: str = "keep_end", num_workers: int = 1, skip_bad_records: bool = False,
                        progress: bool = True, log=print) -> str:
    """Return out_dir holding the pretokenized `inputs`, building it first when it is missing or stale.

    1. List the inputs (files or directories, data_preprocess.readers.list_input_files) and compute the key:
       format version, options, input names/sizes/sha256, tokenizer hash (always hashed: a file whose mtime
       alone changed is still fresh, one whose content changed is never reused).
    2. out_dir/manifest.json holds the same key: reuse it. A non-empty out_dir without a manifest is refused.
    3. Else build into a hidden temporary directory beside out_dir, write manifest.json last, and rename the
       directory into place (a stale out_dir is moved aside first, then deleted).
    Several processes may call it at once: each builds its own temporary directory and a late one keeps the
    first published build when it has the same key. Calling it on one rank before a barrier saves the work.
    """
    opts = SFTOptions(task, max_seq_len, format, max_prompt_len, truncation_mode).resolved()
    files = list_input_files(inputs)
    out = Path(out_dir)
    _check_out_dir(out, inputs, files)
    key = manifest_key(files, tokenizer_dir, opts)
    old = read_manifest(out)
    if old is not None and old.get("key") == key:
        return str(out)
    if old is None and out.is_dir() and any(out.iterdir()):  # never replace a directory that is not ours
        raise ValueError(f"--out_dir={out} exists and holds no {MANIFEST_FILE} of a pretokenize_sft build: choose "
                         f"another --out_dir, or empty it")
    log(f"pretokenize_sft: {'rebuilding the stale' if out.exists() else 'building'} {opts.task} data {out} "
        f"from {len(files)} file(s)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    with writing(f"the pretokenized {opts.task} data", out, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True),
                 fix="{action} or choose another --out_dir (an earlier build there is kept)"):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        counts = _write_dataset(tmp, files, tokenizer_dir, opts, num_workers, skip_bad_records, progress)
        mtimes = {os.path.abspath(f): os.stat(f).st_mtime_ns for f in files}
        manifest = {"task": opts.task, "key": key, "input_mtime_ns": mtimes, "counts": counts}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        _publish(tmp, out, key)
    c = counts
    log(f"pretokenize_sft: {c['examples']} {opts.task} examples, {c['tokens']} tokens ({c['label_tokens']} "
        f"label tokens) from {c['records']} records; {c['truncated']} truncated, {c['dropped_too_long']} dropped "
        f"(too long), {c['bad_records']} bad records skipped -> {out}")
    return str(out)


def main(argv: list[str] | None = None) -> str:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", required=True, help="files or directories, comma-separated (.jsonl .json .parquet)")
    p.add_argument("--tokenizer_dir", required=True, help="a z2all tokenizer dir, or a Hugging Face one (tokenizer.json)")
    p.add_argument("--out_dir", required=True, help="rebuilt when missing or stale, reused when fresh")
    p.add_argument("--task", default="sft", choices=TASKS)
    p.add_argument("--max_seq_len", type=int, default=2048)
    p.add_argument("--format", default="auto", choices=SFT_FORMATS, help="SFT record format")
    p.add_argument("--max_prompt_len", type=int, default=0, help="DPO prompt budget (0 = max_seq_len // 2)")
    p.add_argument("--truncation_mode", default="keep_end", choices=TRUNCATION_MODES, help="DPO prompt cut")
    p.add_argument("--num_workers", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--skip_bad_records", action="store_true", help="skip and count malformed records")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    return ensure_pretokenized(a.input, a.tokenizer_dir, a.out_dir, a.task, a.max_seq_len, a.format,
                               a.max_prompt_len, a.truncation_mode, a.num_workers, a.skip_bad_records,
                               not a.no_progress)


if __name__ == "__main__":
    sys.exit(run_main(main))
