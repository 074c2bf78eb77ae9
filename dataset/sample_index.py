"""Sample-index maps: the (file_id, offset) of every training window over a directory of .bin shards.

A window is max_seq_len + 1 tokens (inputs and the shifted labels); windows start every max_seq_len tokens
of the concatenated shards, so consecutive windows share one token, and a window may run over a shard's
end into the next shard. The map is stored as <data_dir>/sample_index_<L>.npy (int64, shape (W, 2)) with
a JSON sidecar <data_dir>/sample_index_<L>.json that lists each shard's name, size, mtime and hash, its
token count and its largest token id. For a single .bin file given as data_dir the pair lives beside it
as <stem>.sample_index_<L>.npy/.json.

Staleness: on every load the shard list, sizes, mtimes and hashes are compared with the sidecar; any
difference (a shard added, removed or changed) rebuilds the map with a message. The hash is sha256 over
(file size, first MiB, last MiB): fast on TB-sized data and sure to see a header change, a rewrite, a
truncation or an append; an edit confined to the middle of a shard that keeps its size would only be
seen through its mtime.

The out-of-range check (token id >= vocab_size) scans each shard once, vectorised, and caches the max id
in the sidecar; later loads (and builds for another max_seq_len) reuse it while the fingerprint matches.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset.format import DATA_FORMATS, max_token_id, open_bin, read_header, tmp_sibling, token_range_error

INDEX_VERSION = 1
HASH_BYTES = 1 << 20
SPLIT_SEED = 20240601  # fixed, so the train/valid split does not move when --data_seed changes
_CHUNK = 1 << 22  # windows computed per vectorised chunk: bounds temporary memory to ~100 MB


def list_shards(data_path: str | os.PathLike) -> list[Path]:
    """The .bin shards of a data directory (sorted by name), or [file] for a single .bin file."""
    path = Path(data_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"data directory {path} does not exist: pass --data_dir=DIR of .bin shards made by "
                         f"`python -m data_preprocess.pretokenize --out_dir=DIR`")
    shards = sorted(p for p in path.glob("*.bin") if p.is_file())
    if not shards:
        raise ValueError(f"{path} has no .bin shards: run `python -m data_preprocess.pretokenize "
                         f"--input=YOUR_TEXT --tokenizer_dir=TOK --out_dir={path}` first")
    return shards


def index_paths(data_path: str | os.PathLike, max_seq_len: int) -> tuple[Path, Path]:
    path = Path(data_path)
    base = path.parent / f"{path.stem}.sample_index_{max_seq_len}" if path.is_file() else path / f"sample_index_{max_seq_len}"
    return Path(f"{base}.npy"), Path(f"{base}.json")


def fingerprint(path: Path) -> dict:
    """name, size, mtime_ns and sha256(size, first MiB, last MiB) of a shard."""
    st = path.stat()
    digest = hashlib.sha256(st.st_size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        digest.update(f.read(HASH_BYTES))
        if st.st_size > HASH_BYTES:
            f.seek(max(HASH_BYTES, st.st_size - HASH_BYTES))
            digest.update(f.read(HASH_BYTES))
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest.hexdigest()}


def _same_file(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("name", "size", "mtime_ns", "sha256"))


def _cached_stats(sidecar_dir: Path) -> list[dict]:
    """Shard entries of every sidecar in the directory (any max_seq_len), to reuse their range scans."""
    entries = []
    for side in sidecar_dir.glob("*sample_index_*.json"):
        try:
            entries.extend(json.loads(side.read_text()).get("shards", []))
        except (OSError, ValueError):
            continue  # a torn or foreign sidecar only costs a rescan
    return entries


def shard_stats(path: Path, data_format: str, fp: dict, cache: list[dict]) -> dict:
    """fp plus num_tokens, max_id and the header's vocab_size; the scan is skipped on a cache hit."""
    for entry in cache:
        if _same_file(entry, fp) and entry.get("data_format") == data_format and "max_id" in entry:
            return dict(entry)
    tokens = open_bin(path, data_format)
    header_vocab = read_header(path)["vocab_size"] if data_format == "z2all" else None
    return {**fp, "data_format": data_format, "num_tokens": int(len(tokens)),
            "max_id": max_token_id(tokens), "header_vocab_size": header_vocab}


def check_vocab(shards: list[Path], stats: list[dict], vocab_size: int | None) -> None:
    """Compare the cached max ids with the model's vocab_size (and each file's own header)."""
    for path, st in zip(shards, stats):
        header_vocab = st.get("header_vocab_size")
        if header_vocab is not None and st["max_id"] >= header_vocab:
            raise ValueError(f"{path} contains token id {st['max_id']} >= its header's vocab_size {header_vocab}:"
                             f" the file is corrupt. Re-run `python -m data_preprocess.pretokenize`.")
        if vocab_size is not None and st["max_id"] >= vocab_size:
            raise token_range_error(path, st["max_id"], vocab_size)


def write_windows(npy_path: Path, counts: np.ndarray, max_seq_len: int) -> int:
    """Write the (file_id, offset) windows for shards of `counts` tokens; returns the number of windows.

    1. Window j starts at global token g = j * L; there are W = (N - 1) // L windows of L + 1 tokens.
    2. file_id = the shard whose [start, end) holds g: searchsorted over the cumulative ends (side="right"
       skips empty shards); offset = g - start of that shard.
    3. Done in chunks of _CHUNK windows into an .npy memmap under a temporary name, then renamed.
    """
    total = int(counts.sum())
    num_windows = (total - 1) // max_seq_len if total > 0 else 0
    ends = np.cumsum(counts.astype(np.int64))
    starts = ends - counts
    tmp = tmp_sibling(npy_path)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(num_windows, 2))
    for c0 in range(0, num_windows, _CHUNK):
        c1 = min(num_windows, c0 + _CHUNK)
        g = np.arange(c0, c1, dtype=np.int64) * max_seq_len
        fid = np.searchsorted(ends, g, side="right")
        out[c0:c1, 0] = fid
        out[c0:c1, 1] = g - starts[fid]
    out.flush()
    del out
    os.replace(tmp, npy_path)
    return num_windows


@dataclass
class SampleIndex:
    shards: list[Path]
    num_tokens: list[int]  # per shard
    windows: np.ndarray  # (W, 2) int64 (file_id, offset), memmapped read-only
    max_seq_len: int
    data_format: str

    def __len__(self) -> int:
        return len(self.windows)


def _stale_reasons(meta: dict, fps: list[dict], max_seq_len: int, data_format: str) -> list[str]:
    if meta.get("version") != INDEX_VERSION or meta.get("max_seq_len") != max_seq_len \
            or meta.get("data_format") != data_format:
        return ["index version, max_seq_len or data_format differ"]
    old = {e["name"]: e for e in meta.get("shards", [])}
    new = {fp["name"]: fp for fp in fps}
    reasons = []
    if added := sorted(set(new) - set(old)):
        reasons.append(f"shards added: {added}")
    if removed := sorted(set(old) - set(new)):
        reasons.append(f"shards removed: {removed}")
    if changed := sorted(n for n in set(new) & set(old) if not _same_file(old[n], new[n])):
        reasons.append(f"shards changed (size, mtime or hash): {changed}")
    return reasons


def load_or_build_sample_index(data_path: str | os.PathLike, max_seq_len: int, vocab_size: int | None = None,
                               data_format: str = "z2all", rebuild: bool = False,
                               log=print) -> SampleIndex:
    """Load the map for (data_path, max_seq_len), building it when missing, stale or when rebuild=True.

    1. List and fingerprint the shards. 2. Reuse the map only if its sidecar matches exactly; otherwise
    say why and rebuild: per-shard stats (cached range scans reused), windows, then the sidecar last (a
    crash mid-build leaves no sidecar, hence a rebuild). 3. Check every shard's max id against vocab_size.
    """
    if data_format not in DATA_FORMATS:
        raise ValueError(f"--data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    if max_seq_len < 1:
        raise ValueError(f"--max_seq_len must be >= 1, got {max_seq_len}")
    shards = list_shards(data_path)
    fps = [fingerprint(p) for p in shards]
    npy_path, json_path = index_paths(data_path, max_seq_len)
    meta = None
    if json_path.exists() and npy_path.exists() and not rebuild:
        try:
            meta = json.loads(json_path.read_text())
        except ValueError:
            meta = None
        reasons = ["its sidecar is unreadable"] if meta is None else _stale_reasons(meta, fps, max_seq_len, data_format)
        if reasons:
            log(f"sample index {npy_path} is stale ({'; '.join(reasons)}): rebuilding")
            meta = None
    elif not rebuild:
        log(f"sample index {npy_path} not found: building it")
    if meta is None:
        meta = _build(shards, fps, npy_path, json_path, max_seq_len, data_format, log)
    stats = meta["shards"]
    check_vocab(shards, stats, vocab_size)
    windows = np.load(npy_path, mmap_mode="r")
    if windows.shape != (meta["num_windows"], 2):
        raise ValueError(f"{npy_path} has shape {windows.shape}, its sidecar says ({meta['num_windows']}, 2): "
                         f"rebuild with `python -m data_preprocess.build_sample_index --data_dir={data_path} "
                         f"--max_seq_len={max_seq_len} --rebuild`")
    return SampleIndex(shards, [s["num_tokens"] for s in stats], windows, max_seq_len, data_format)


def _build(shards, fps, npy_path, json_path, max_seq_len, data_format, log) -> dict:
    cache = _cached_stats(json_path.parent)
    json_path.unlink(missing_ok=True)  # no sidecar may describe a map that is being replaced
    stats = [shard_stats(p, data_format, fp, cache) for p, fp in zip(shards, fps)]
    counts = np.array([s["num_tokens"] for s in stats], dtype=np.int64)
    total = int(counts.sum())
    if total < max_seq_len + 1:
        raise ValueError(f"max_seq_len={max_seq_len} needs windows of {max_seq_len + 1} tokens, but "
                         f"{json_path.parent} has only {total} tokens in {len(shards)} shard(s): lower "
                         f"--max_seq_len (at most {total - 1}) or add data")
    num_windows = write_windows(npy_path, counts, max_seq_len)
    meta = {"version": INDEX_VERSION, "max_seq_len": max_seq_len, "data_format": data_format,
            "num_tokens": total, "num_windows": num_windows,
            "hash": "sha256 over (8-byte size, first MiB, last MiB) of each shard", "shards": stats}
    tmp = tmp_sibling(json_path)
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, json_path)
    log(f"sample index {npy_path}: {num_windows} windows of {max_seq_len + 1} tokens over {total} tokens "
        f"in {len(shards)} shard(s)")
    return meta


def split_windows(num_windows: int, valid_ratio: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train_ids, valid_ids), sorted: valid is the last ceil(ratio * W) entries of a seeded permutation."""
    if not 0.0 <= valid_ratio < 1.0:
        raise ValueError(f"--valid_ratio must be in [0, 1), got {valid_ratio}")
    num_valid = math.ceil(valid_ratio * num_windows) if valid_ratio > 0 else 0
    if num_valid >= num_windows:
        raise ValueError(f"--valid_ratio={valid_ratio} of {num_windows} window(s) leaves no training window: "
                         f"add data, lower --max_seq_len, or set --valid_ratio=0 / --valid_data_dir=DIR")
    perm = np.random.default_rng(seed).permutation(num_windows)
    return np.sort(perm[:num_windows - num_valid]), np.sort(perm[num_windows - num_valid:])
