"""SFT and DPO data: the pretokenized datasets, packing, and the collate functions that make model batches.

On disk (written by data_preprocess.pretokenize_sft, which documents it): input_ids.bin (the dataset/format.py
layout), loss_mask.u8 (one uint8 per token), offsets.npy (int64 segment offsets) and manifest.json. SFT has one
segment per conversation; DPO three per pair (prompt, chosen response, rejected response).

Batches hold CPU tensors; ``targets`` are already aligned for ``Z2allForCausalLM.forward(targets=...)``:
targets[t] = input_ids[t + 1] when that next token is trained on (mask 1) and belongs to the same example,
else -100. So an example never predicts the first token of the next one, and padding predicts nothing.

- ``collate_padded``: one example per row, right-padded to the longest of the micro-batch (the baseline).
- ``collate_packed``: several examples per row of ``seq_len`` tokens (rows from ``pack_examples``), with
  ``cu_seqlens`` over the flattened B*T tokens and position_ids restarting at each example, so attention never
  crosses an example (model/ops/attention.py); the padding at a row's end is a segment of its own.
- ``collate_dpo``: the B chosen rows, then the B rejected rows (one forward), padded to the longest, with
  ``response_mask`` = targets != -100, so a per-row sum of token log-probs is a masked sum.
"""
from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dataset.format import open_bin

SFT_FORMAT_VERSION = 1  # bump when the layout or the rendering of the ids changes (the manifest key holds it)
TASKS = ("sft", "dpo")
IDS_FILE, MASK_FILE, OFFSETS_FILE, MANIFEST_FILE = "input_ids.bin", "loss_mask.u8", "offsets.npy", "manifest.json"
IGNORE_INDEX = -100
_REBUILD = "re-run `python -m data_preprocess.pretokenize_sft` to rebuild it"


class _SegmentStore:
    """The segments of one pretokenized directory, memmapped lazily per process (so it pickles small).

    A map-style dataset (len, [i]) for torch's DataLoader. torch itself is imported only where batches are
    made: data_preprocess.pretokenize_sft and its worker processes import this module for its file names.
    """

    task = ""
    segments_per_example = 1

    def __init__(self, data_dir: str | os.PathLike, vocab_size: int | None = None):
        self.data_dir = Path(data_dir)
        try:
            self.manifest = json.loads((self.data_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.data_dir} has no readable {MANIFEST_FILE} ({e}): it is not a pretokenized "
                             f"{self.task} directory; build it with `python -m data_preprocess.pretokenize_sft "
                             f"--task={self.task}`") from e
        key = self.manifest.get("key", {})
        if self.manifest.get("task") != self.task or key.get("format_version") != SFT_FORMAT_VERSION:
            raise ValueError(f"{self.data_dir} holds {self.manifest.get('task')!r} data of format version "
                             f"{key.get('format_version')}, not {self.task!r} version {SFT_FORMAT_VERSION}: {_REBUILD}")
        self.offsets = np.load(self.data_dir / OFFSETS_FILE)
        self.vocab_size = vocab_size
        self.max_seq_len = int(key["options"]["max_seq_len"])
        self.pad_id = int(self.manifest["counts"]["pad_id"])
        if (len(self.offsets) - 1) % self.segments_per_example:
            raise ValueError(f"{self.data_dir / OFFSETS_FILE} has {len(self.offsets) - 1} segments, not a multiple "
                             f"of {self.segments_per_example}: {_REBUILD}")
        self._maps: tuple[np.ndarray, np.ndarray] | None = None
        self._pid = -1
        self._open()  # fail now, in the constructor, on a truncated or mismatched file

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"], state["_pid"] = None, -1
        return state

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._maps is None or self._pid != os.getpid():
            ids = open_bin(self.data_dir / IDS_FILE, vocab_size=self.vocab_size)
            mask = np.memmap(self.data_dir / MASK_FILE, dtype=np.uint8, mode="r")
            if not len(ids) == len(mask) == int(self.offsets[-1]):
                raise ValueError(f"{self.data_dir}: {len(ids)} ids, {len(mask)} mask bytes and offsets ending at "
                                 f"{int(self.offsets[-1])} disagree (truncated files?): {_REBUILD}")
            self._maps, self._pid = (ids, mask), os.getpid()
        return self._maps

    def segment(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, mask uint8) of segment s."""
        ids, mask = self._open()
        lo, hi = int(self.offsets[s]), int(self.offsets[s + 1])
        return ids[lo:hi].astype(np.int64), np.array(mask[lo:hi])

    def __len__(self) -> int:
        return (len(self.offsets) - 1) // self.segments_per_example

    def _check_index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} {self.task} examples")
        return i % len(self)


class SFTDataset(_SegmentStore):
    """ds.example(i) (also ds[i]) -> (ids int64, mask uint8) of conversation i; ds.lengths: tokens of each."""

    task = "sft"

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.segment(self._check_index(i))

    __getitem__ = example


@dataclass
class DPOPair:
    """One preference pair; each side is prompt + response, mask 1 on the response and its end-of-turn token."""

    chosen_ids: np.ndarray
    chosen_mask: np.ndarray
    rejected_ids: np.ndarray
    rejected_mask: np.ndarray


class DPODataset(_SegmentStore):
    """ds.pair(i) (also ds[i]) -> DPOPair; len(ds) is the number of pairs."""

    task = "dpo"
    segments_per_example = 3

    @property
    def lengths(self) -> np.ndarray:
        """(pairs, 2) int64: tokens of the chosen and of the rejected side (each with its prompt)."""
        seg = np.diff(self.offsets).reshape(-1, 3)
        return seg[:, :1] + seg[:, 1:]

    def pair(self, i: int) -> DPOPair:
        s = 3 * self._check_index(i)
        (p_ids, p_mask), (c_ids, c_mask), (r_ids, r_mask) = (self.segment(s + k) for k in range(3))
        return DPOPair(np.concatenate([p_ids, c_ids]), np.concatenate([p_mask, c_mask]),
                       np.concatenate([p_ids, r_ids]), np.concatenate([p_mask, r_mask]))

    __getitem__ = pair


# ---- packing ------------------------------------------------------------------------------------------------

def pack_examples(lengths: np.ndarray, max_seq_len: int, order: Sequence[int] | None = None) -> list[np.ndarray]:
    """Rows of example indices, each row's lengths summing to <= max_seq_len (best-fit decreasing).

    1. Take the examples in `order` (default: all, in index order; pass the epoch's shuffled order).
    2. Sort them by length, longest first; the sort is stable, so equal lengths keep `order`'s order.
    3. Put each into the open row with the least room that still fits it (best fit), or open a new row.
       Rows are kept in buckets by their free room, with a sorted list of the non-empty room sizes, so a
       lookup is one bisect; a row with no room left is closed.
    4. Return the rows in the order they were opened (within a row: in placement order).
    The same (lengths, max_seq_len, order) always gives the same rows. Short examples fill the gaps the long
    ones leave, so rows of skewed-short data come out nearly full.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.arange(len(lengths)) if order is None else np.asarray(order, dtype=np.int64)
    if len(order) and (lengths[order].max() > max_seq_len or lengths[order].min() < 1):
        bad = int(order[np.argmax((lengths[order] > max_seq_len) | (lengths[order] < 1))])
        raise ValueError(f"example {bad} has {int(lengths[bad])} tokens, outside [1, max_seq_len={max_seq_len}]: "
                         f"pretokenize with --max_seq_len={max_seq_len} (or larger rows)")
    ranked = order[np.argsort(-lengths[order], kind="stable")]
    rows: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # free room -> rows with exactly that room
    rooms: list[int] = []  # sorted room sizes that have at least one row
    for i in ranked.tolist():
        n = int(lengths[i])
        j = bisect.bisect_left(rooms, n)
        if j < len(rooms):
            room = rooms[j]
            r = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(j)
        else:
            room, r = max_seq_len, len(rows)
            rows.append([])
        rows[r].append(i)
        left = room - n
        if left > 0:
            if left not in by_room:
                by_room[left] = []
                bisect.insort(rooms, left)
            by_room[left].append(r)
    return [np.asarray(row, dtype=np.int64) for row in rows]


class PackedSFTDataset:
    """Rows of packed conversations: ds[r] -> list of (ids, mask); batch them with collate_packed.

    The rows are packed once (pack_examples over a seeded shuffle of `indices`, e.g. a train split), so
    a sampler over rows (dataset.sampler) shuffles them per epoch and resumes as over any dataset.
    """

    def __init__(self, dataset: SFTDataset, max_seq_len: int | None = None, seed: int = 0,
                 indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.max_seq_len = max_seq_len or dataset.max_seq_len
        pool = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        order = np.random.default_rng(seed).permutation(pool)
        self.rows = pack_examples(dataset.lengths, self.max_seq_len, order)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, r: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.dataset.example(int(i)) for i in self.rows[r]]


# ---- batches ------------------------------------------------------------------------------------------------

@dataclass
class SFTBatch:
    input_ids: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64, aligned (position t predicts targets[t]), -100 = no loss
    position_ids: torch.Tensor  # (B, T) int64, restarting at 0 in each example
    cu_seqlens: torch.Tensor | None  # (segments + 1,) int32 over the flattened B*T tokens; None when unpacked
    max_seqlen: int  # the longest segment (T when unpacked)
    num_label_tokens: int  # targets != -100


@dataclass
class DPOBatch(SFTBatch):
    response_mask: torch.Tensor | None = None  # (2B, T) bool, == targets != -100: sum per row for log-probs
    num_pairs: int = 0  # B: rows [0, B) are the chosen sides, [B, 2B) the rejected ones


def _place(input_ids: np.ndarray, targets: np.ndarray, positions: np.ndarray, b: int, start: int,
           ids: np.ndarray, mask: np.ndarray) -> int:
    """Write one example at row b from `start`; returns the end. Its last token predicts nothing."""
    n = len(ids)
    input_ids[b, start:start + n] = ids
    targets[b, start:start + n - 1] = np.where(mask[1:] != 0, ids[1:], IGNORE_INDEX)
    positions[b, start:start + n] = np.arange(n)
    return start + n


def _arrays(batch: int, seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.full((batch, seq_len), pad_id, dtype=np.int64), np.full((batch, seq_len), IGNORE_INDEX, np.int64),
            np.zeros((batch, seq_len), dtype=np.int64))


def _batch(cls, input_ids: np.ndarray, targets: np.ndarray, positions: np.ndarray, max_seqlen: int,
           cu_seqlens: list[int] | None, **extra):
    """The batch dataclass of numpy arrays as CPU tensors (extra numpy arrays too)."""
    import torch

    extra = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in extra.items()}
    cu = None if cu_seqlens is None else torch.tensor(cu_seqlens, dtype=torch.int32)
    return cls(torch.from_numpy(input_ids), torch.from_numpy(targets), torch.from_numpy(positions), cu,
               int(max_seqlen), int((targets != IGNORE_INDEX).sum()), **extra)


def _padded(examples: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int):
    """(input_ids, targets, positions, T): one example per row, right-padded with pad_id to the longest."""
    seq_len = max(len(ids) for ids, _ in examples)
    input_ids, targets, positions = _arrays(len(examples), seq_len, pad_id)
    for b, (ids, mask) in enumerate(examples):
        _place(input_ids, targets, positions, b, 0, ids, mask)
    positions[:] = np.arange(seq_len)  # padding continues the positions; nothing reads its attention
    return input_ids, targets, positions, seq_len


def collate_padded(examples: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int) -> SFTBatch:
    """One example per row, right-padded to the longest; no cu_seqlens (causal attention never reaches the
    padding after a row's tokens)."""
    return _batch(SFTBatch, *_padded(examples, pad_id), cu_seqlens=None)


def collate_packed(rows: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], seq_len: int, pad_id: int) -> SFTBatch:
    """Rows of several examples each, padded to seq_len (fixed shapes); see the module docstring."""
    input_ids, targets, positions = _arrays(len(rows), seq_len, pad_id)
    cu = [0]
    for b, row in enumerate(rows):
        end = 0
        for ids, mask in row:
            if end + len(ids) > seq_len:
                raise ValueError(f"a packed row holds {end + len(ids)} tokens > seq_len={seq_len}: pack with the "
                                 f"same max_seq_len as the collate")
            end = _place(input_ids, targets, positions, b, end, ids, mask)
            cu.append(b * seq_len + end)
        if end < seq_len:  # the padding is a segment of its own: no example attends to it
            positions[b, end:] = np.arange(seq_len - end)
            cu.append((b + 1) * seq_len)
    return _batch(SFTBatch, input_ids, targets, positions, int(np.diff(cu).max()), cu)


def collate_dpo(pairs: Sequence[DPOPair], pad_id: int) -> DPOBatch:
    """The B chosen sides, then the B rejected sides, right-padded to the longest of all 2B rows."""
    sides = [(p.chosen_ids, p.chosen_mask) for p in pairs] + [(p.rejected_ids, p.rejected_mask) for p in pairs]
    input_ids, targets, positions, seq_len = _padded(sides, pad_id)
    return _batch(DPOBatch, input_ids, targets, positions, seq_len, cu_seqlens=None,
                  response_mask=targets != IGNORE_INDEX, num_pairs=len(pairs))
