"""BatchPrefetcher: copy the next batch to the GPU on a side stream while the current one trains.

A batch is a tensor, a tuple/list of batches, or a dataclass whose fields are batches or plain values (ints,
None): `map_tensors` walks that structure, so pretraining's (x, y) and the SFT/DPO batch dataclasses move alike.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator

import torch


def map_tensors(batch, fn: Callable[[torch.Tensor], torch.Tensor]):
    """The batch with every tensor replaced by fn(tensor); other values are kept."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(b, fn) for b in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: map_tensors(getattr(batch, f.name), fn)
                                             for f in dataclasses.fields(batch) if f.init})
    return batch


def move_batch(batch, device: torch.device, non_blocking: bool = False):
    return map_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))


class BatchPrefetcher:
    """Wrap an iterable of CPU batches; iterate to get them on `device`.

    On CUDA (and enabled):
    1. When a batch is taken, the next one is already being copied: pinned (unless the DataLoader already
       pinned it), then .to(device, non_blocking=True) on a side stream.
    2. __next__ makes the compute stream wait for the side stream, marks the tensors as used by the
       compute stream (record_stream, so the caching allocator does not reuse their memory early), and
       starts the copy of the following batch.
    Elsewhere (CPU, or enabled=False) it yields the batches moved with a plain .to(device).
    """

    def __init__(self, batches: Iterable, device: torch.device | str, enabled: bool = True):
        self.device = torch.device(device)
        self._it = iter(batches)
        self._cuda = enabled and self.device.type == "cuda" and torch.cuda.is_available()
        self._stream = torch.cuda.Stream(device=self.device) if self._cuda else None
        self._next = None
        self._done = False
        if self._cuda:
            self._preload()

    def _preload(self) -> None:
        try:
            batch = next(self._it)
        except StopIteration:
            self._next, self._done = None, True
            return
        with torch.cuda.stream(self._stream):
            self._next = map_tensors(
                batch, lambda t: (t if t.is_pinned() else t.pin_memory()).to(self.device, non_blocking=True))

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        if not self._cuda:
            return move_batch(next(self._it), self.device)
        if self._done:
            raise StopIteration
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)
        batch = self._next

        def used_here(t: torch.Tensor) -> torch.Tensor:
            t.record_stream(current)
            return t

        map_tensors(batch, used_here)
        self._preload()
        return batch
