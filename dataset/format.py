"""The pretokenized .bin format: a 256 x int32 header followed by the token ids.

Header (little-endian int32 words; the rest of the 256 words are zero, reserved):
    [0] MAGIC            identifies a z2all token file
    [1] VERSION          bumped on an incompatible layout change
    [2] dtype code       1 = uint16 (vocab_size <= 65536, so every id < 65536), 2 = uint32
    [3] vocab_size       the tokenizer's vocabulary size; every id in the file is < vocab_size
    [4], [5]             token count, low and high 32 bits (files may exceed 2**31 tokens)
    [6], [7]             document count (documents that end in this file), low and high 32 bits

Documents are stored back to back, each as BOS, its tokens, EOS. Files are read with np.memmap and
written only through a temporary file that is renamed into place, so a reader never sees a half-written
file under the final name. nanoGPT-style headerless uint16 files are read with data_format="raw_uint16".
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

MAGIC = 0x7A32414C  # "z2AL"
VERSION = 1
HEADER_WORDS = 256
HEADER_BYTES = HEADER_WORDS * 4
DTYPE_CODES = {1: np.dtype(np.uint16), 2: np.dtype(np.uint32)}
_CODE_OF = {np.dtype(np.uint16): 1, np.dtype(np.uint32): 2}
DATA_FORMATS = ("z2all", "raw_uint16")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id (< vocab_size) fits in 16 bits, else uint32."""
    if not 0 < vocab_size < 2**31:
        raise ValueError(f"vocab_size must be in [1, 2**31), got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def make_header(vocab_size: int, num_tokens: int, num_docs: int) -> np.ndarray:
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[0], header[1] = MAGIC, VERSION
    header[2] = _CODE_OF[token_dtype(vocab_size)]
    header[3] = vocab_size
    header[4:6] = np.array([num_tokens], dtype="<u8").view("<i4")
    header[6:8] = np.array([num_docs], dtype="<u8").view("<i4")
    return header


def read_header(path: str | os.PathLike) -> dict:
    """Parse and validate the header of a z2all .bin file (not its size: see open_bin)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): it is not a token file. Delete it, or re-run "
                         f"`python -m data_preprocess.pretokenize` to regenerate the data directory.")
    raw_fix = ("if it is a nanoGPT-style headerless uint16 file, pass --data_format=raw_uint16; otherwise "
               "re-run `python -m data_preprocess.pretokenize` to regenerate it")
    if size < HEADER_BYTES:
        raise ValueError(f"{path} has {size} bytes, less than the {HEADER_BYTES}-byte z2all header "
                         f"(truncated or headerless): {raw_fix}")
    header = np.fromfile(path, dtype="<i4", count=HEADER_WORDS)
    if int(header[0]) != MAGIC:
        raise ValueError(f"{path} has no z2all header (magic {int(header[0]):#x} != {MAGIC:#x}): {raw_fix}")
    if int(header[1]) != VERSION:
        raise ValueError(f"{path} has format version {int(header[1])}, this code reads version {VERSION}: "
                         f"re-run `python -m data_preprocess.pretokenize` with this version of z2all")
    code = int(header[2])
    if code not in DTYPE_CODES:
        raise ValueError(f"{path} has an unknown token dtype code {code} (expected 1=uint16 or 2=uint32): "
                         f"the header is corrupt; re-run `python -m data_preprocess.pretokenize`")
    vocab_size = int(header[3])
    if vocab_size <= 0 or (code == 1 and vocab_size > 2**16):
        raise ValueError(f"{path} has an invalid vocab_size {vocab_size} for dtype code {code}: the header is "
                         f"corrupt; re-run `python -m data_preprocess.pretokenize`")
    return {
        "dtype": DTYPE_CODES[code],
        "vocab_size": vocab_size,
        "num_tokens": int(header[4:6].view("<u8")[0]),
        "num_docs": int(header[6:8].view("<u8")[0]),
    }


def open_bin(path: str | os.PathLike, data_format: str = "z2all", vocab_size: int | None = None) -> np.memmap:
    """Open a token file read-only as a 1-D np.memmap of its token ids.

    1. data_format="raw_uint16": the whole file is uint16 tokens (nanoGPT layout); it must be non-empty
       and of even size.
    2. data_format="z2all": check magic, version and dtype (read_header), then that the file size is exactly
       header + count * itemsize, so a truncated or over-long file is named instead of read wrong.
    3. If vocab_size is given, scan the ids (vectorised, in chunks) and fail when one is >= vocab_size.
    """
    path = Path(path)
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    size = path.stat().st_size
    if data_format == "raw_uint16":
        if size == 0 or size % 2:
            raise ValueError(f"{path} has {size} bytes: a raw_uint16 file must be non-empty with an even size "
                             f"(truncated?); regenerate it, or drop --data_format=raw_uint16 for z2all files")
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
    else:
        info = read_header(path)
        expected = HEADER_BYTES + info["num_tokens"] * info["dtype"].itemsize
        if size != expected:
            what = "truncated" if size < expected else "longer than its header says"
            raise ValueError(f"{path} is {what}: {size} bytes, but its header says {info['num_tokens']} "
                             f"{info['dtype'].name} tokens = {expected} bytes. Re-run "
                             f"`python -m data_preprocess.pretokenize` to regenerate it.")
        if info["num_tokens"] == 0:
            raise ValueError(f"{path} holds 0 tokens: delete it or re-run `python -m data_preprocess.pretokenize`")
        tokens = np.memmap(path, dtype=info["dtype"], mode="r", offset=HEADER_BYTES, shape=(info["num_tokens"],))
    if vocab_size is not None:
        check_token_range(tokens, vocab_size, path)
    return tokens


def max_token_id(tokens: np.ndarray, chunk: int = 1 << 25) -> int:
    """The largest id in a (memmapped) token array, read in chunks so memory stays flat."""
    best = 0
    for start in range(0, len(tokens), chunk):
        best = max(best, int(tokens[start:start + chunk].max()))
    return best


def token_range_error(path, max_id: int, vocab_size: int) -> ValueError:
    return ValueError(
        f"{path} contains token id {max_id} >= vocab_size {vocab_size}: the data was tokenized with a larger "
        f"vocabulary than the model's. Set --vocab_size to at least {max_id + 1} (the tokenizer's "
        f"model_vocab_size), or re-run `python -m data_preprocess.pretokenize` with the model's tokenizer.")


def check_token_range(tokens: np.ndarray, vocab_size: int, path) -> int:
    """Raise token_range_error if any id >= vocab_size; return the max id."""
    max_id = max_token_id(tokens)
    if max_id >= vocab_size:
        raise token_range_error(path, max_id, vocab_size)
    return max_id


def tmp_sibling(path: str | os.PathLike) -> Path:
    """A unique temporary name beside `path` (pid + random: ranks on several hosts may share a filesystem),
    hidden and without the final suffix, so shard globs such as *.bin never pick it up."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}.{uuid.uuid4().hex[:8]}")


class BinWriter:
    """Stream tokens into a .bin file: written under a temporary name, renamed into place on close().

    The header is written first with zero counts and rewritten with the final counts on close(), so a
    crash leaves only the temporary file behind, never a wrong file under the final name.
    """

    def __init__(self, path: str | os.PathLike, vocab_size: int):
        self.path = Path(path)
        self.vocab_size = int(vocab_size)
        self.dtype = token_dtype(self.vocab_size)
        self.num_tokens = 0
        self.num_docs = 0
        self._tmp = tmp_sibling(self.path)
        self._f = open(self._tmp, "wb")
        self._f.write(make_header(self.vocab_size, 0, 0).tobytes())

    def write(self, tokens: np.ndarray, num_docs: int = 0) -> None:
        """Append tokens (any integer array; ids must be < vocab_size) and count num_docs finished documents."""
        tokens = np.asarray(tokens)
        if tokens.size and (int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0):
            raise ValueError(f"writing {self.path}: token ids must be in [0, {self.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]: the tokenizer and vocab_size disagree")
        self._f.write(tokens.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self.num_tokens += int(tokens.size)
        self.num_docs += int(num_docs)

    def close(self) -> Path:
        self._f.seek(0)
        self._f.write(make_header(self.vocab_size, self.num_tokens, self.num_docs).tobytes())
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file. After a failure (a full disk) closing may fail to flush; the unlink must not."""
        try:
            self._f.close()
        except OSError:
            pass
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "BinWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_bin(path: str | os.PathLike, tokens: np.ndarray, vocab_size: int, num_docs: int = 0) -> Path:
    """Write one whole .bin shard atomically (BinWriter: a temporary file, then the rename)."""
    with BinWriter(path, vocab_size) as writer:
        writer.write(tokens, num_docs)
    return Path(path)
