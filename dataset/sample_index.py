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
seen through its mtime. A shard truncated after the map was built is therefore seen before training: the
rebuild checks its size against its header and names it. The sidecar fingerprints the map itself the same way,
so a map overwritten by garbage (or unreadable, or of the wrong shape) is rebuilt too, with a message.

Writing: the map is streamed to a temporary file (never through a memmap: a full disk would kill the process
with SIGBUS) and renamed into place, the sidecar last; a failed build removes its temporary files, and a disk
fault is a DiskFault (one line: the file, the fix).

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
from utils.disk_faults import writing
from utils.fileio import atomic_write_text

INDEX_VERSION = 2  # 2: the sidecar fingerprints the map itself
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
    3. Done in chunks of _CHUNK windows appended to an .npy file under a temporary name, then renamed. Plain
       writes, not a memmap: a full disk raises an OSError instead of killing the process with SIGBUS.
    """
    total = int(counts.sum())
    num_windows = (total - 1) // max_seq_len if total > 0 else 0
    ends = np.cumsum(counts.astype(np.int64))
    starts = ends - counts
    tmp = tmp_sibling(npy_path)
    try:
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": np.dtype("<i8").str, "fortran_order": False,
                                                      "shape": (num_windows, 2)})
            for c0 in range(0, num_windows, _CHUNK):
                g = np.arange(c0, min(num_windows, c0 + _CHUNK), dtype=np.int64) * max_seq_len
                fid = np.searchsorted(ends, g, side="right")
                fh.write(np.stack([fid, g - starts[fid]], axis=1).astype("<i8").tobytes())
        os.replace(tmp, npy_path)
    finally:
        tmp.unlink(missing_ok=True)
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
    windows = None
    if meta is not None:
        windows, damage = _open_map(npy_path, meta)
        if damage:
            log(f"sample index {npy_path} is corrupted ({damage}): rebuilding")
            meta = None
    if meta is None:
        with writing("the sample index", npy_path, fix="{action}, or build it where the data can be written "
                     "(python -m data_preprocess.build_sample_index) and copy it beside the shards"):
            meta = _build(shards, fps, npy_path, json_path, max_seq_len, data_format, log)
        windows, damage = _open_map(npy_path, meta)
        if damage:
            raise RuntimeError(f"{npy_path} was just built but {damage}: is another process writing it?")
    stats = meta["shards"]
    check_vocab(shards, stats, vocab_size)
    return SampleIndex(shards, [s["num_tokens"] for s in stats], windows, max_seq_len, data_format)


def _open_map(npy_path: Path, meta: dict) -> tuple[np.ndarray | None, str | None]:
    """(the map, memmapped read-only, None), or (None, why it is damaged): it must match its sidecar's fingerprint,
    load as an .npy and have the sidecar's shape."""
    if not _same_file(meta.get("index") or {}, fingerprint(npy_path)):
        return None, "it does not match its sidecar's size, mtime or hash: overwritten or damaged"
    try:
        windows = np.load(npy_path, mmap_mode="r")
    except (ValueError, OSError) as e:
        return None, f"it does not load: {' '.join(str(e).split())}"
    if windows.shape != (meta["num_windows"], 2) or windows.dtype != np.int64:
        return None, f"shape {windows.shape} {windows.dtype}, its sidecar says ({meta['num_windows']}, 2) int64"
    return windows, None


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
            "hash": "sha256 over (8-byte size, first MiB, last MiB) of each shard and of the map",
            "index": fingerprint(npy_path), "shards": stats}
    atomic_write_text(json_path, json.dumps(meta, indent=1), durable=False)
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
