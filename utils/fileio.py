"""Durable, atomic file writes.

A reader of a path written through these helpers sees either the old content or the new content, never a
partial file: the data goes to a temporary file in the same directory (same filesystem, so the rename is
atomic), is flushed and fsync'ed, then renamed over the target, and the directory entry is fsync'ed.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

_HASH_CHUNK = 4 * 1024 * 1024


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory by path (a directory fsync makes its renames and new entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_sibling(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside `path` (same directory, so os.replace onto `path` is atomic)."""
    p = Path(path)
    return p.with_name(f".tmp-{p.name}-{secrets.token_hex(4)}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` atomically. durable=False skips the fsyncs (still atomic, not crash-durable)."""
    target = Path(path)
    tmp = tmp_sibling(target)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(target.parent)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", durable=durable)


def write_file_durable(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a new file at `path` and fsync it (for files inside a not-yet-published temp dir)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large checkpoints do not need to fit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_HASH_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def check_writable(path: str | os.PathLike) -> None:
    """Raise ValueError (one line, with the fix) unless `path`, or the nearest existing dir above it, is a
    writable directory. Checked with os.access, so nothing is written: a read-only mount answers EROFS."""
    p = Path(path).absolute()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{probe} is not a directory, so {path} cannot be created; choose another --out_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = f"{path} is not writable" if probe == p else f"{path} cannot be created: {probe} is not writable"
        raise ValueError(f"{what} (read-only or no permission); choose another --out_dir or fix its permissions")


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file the mode a plain open() would (0666 minus the umask). safetensors writes 0600, which keeps
    the weights from a team sharing a run dir on a cluster while every other file of the run is readable."""
    os.chmod(path, 0o666 & ~_umask())
