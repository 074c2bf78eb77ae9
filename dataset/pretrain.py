"""PretrainDataset: fixed-length windows of memmapped .bin shards, read through a sample-index map."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.config import DataConfig
from dataset.format import open_bin
from dataset.sample_index import load_or_build_sample_index, split_windows


class PretrainDataset(Dataset):
    """ds[i] -> (x, y): int64 tensors of max_seq_len tokens, y = x shifted left by one.

    The windows come from the sample-index map of data.data_dir (built when missing or stale). The split is
    on the windows: split="valid" takes a fixed seeded data.valid_ratio of them (split="train" the rest), or,
    when data.valid_data_dir is given, train uses all of data_dir and valid all of valid_data_dir.
    Shards are memmapped lazily, per process, on first read, so the dataset pickles small and DataLoader
    workers (fork or spawn) open their own maps.
    """

    def __init__(self, data: DataConfig, max_seq_len: int, vocab_size: int, split: str = "train", log=print):
        data_dir, valid_data_dir, data_format = data.data_dir, data.valid_data_dir, data.data_format
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
        if not data_dir:
            raise ValueError("PretrainDataset needs a data_dir of .bin shards (train.py substitutes the demo data "
                             "for --data_dir=''): pass --data_dir=DIR")
        source = valid_data_dir if (split == "valid" and valid_data_dir) else data_dir
        index = load_or_build_sample_index(source, max_seq_len, vocab_size, data_format, log=log)
        self.max_seq_len = max_seq_len
        self.data_format = data_format
        self.shards = [str(p) for p in index.shards]
        self.shard_tokens = np.asarray(index.num_tokens, dtype=np.int64)
        self.windows = index.windows
        if valid_data_dir:
            self.ids = None  # every window of source
        else:
            train_ids, valid_ids = split_windows(len(index), data.valid_ratio)
            self.ids = train_ids if split == "train" else valid_ids
        if len(self) == 0:
            raise ValueError(f"the {split} split of {source} has no windows of {max_seq_len + 1} tokens: "
                             f"{'raise --valid_ratio' if split == 'valid' else 'add data'} or lower --max_seq_len")
        self._maps: list[np.memmap] | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.windows) if self.ids is None else len(self.ids)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"], state["_pid"] = None, -1
        return state

    def _shard(self, fid: int) -> np.memmap:
        if self._maps is None or self._pid != os.getpid():
            self._maps = [None] * len(self.shards)
            self._pid = os.getpid()
        if self._maps[fid] is None:
            self._maps[fid] = open_bin(self.shards[fid], self.data_format)
        return self._maps[fid]

    def read_window(self, w: int) -> np.ndarray:
        """The max_seq_len + 1 tokens of window w as int64, stitched across shard ends."""
        fid, offset = (int(v) for v in self.windows[w])
        need = self.max_seq_len + 1
        out = np.empty(need, dtype=np.int64)
        got = 0
        while got < need:
            assert fid < len(self.shards), "sample index points past the last shard"
            piece = self._shard(fid)[offset:offset + need - got]
            out[got:got + len(piece)] = piece
            got += len(piece)
            fid, offset = fid + 1, 0
        return out

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} windows")
        w = int(i if self.ids is None else self.ids[i])
        buf = torch.from_numpy(self.read_window(w))
        return buf[:-1], buf[1:]
