"""BatchPrefetcher: copy the next (x, y) batch to the GPU on a side stream while the current one trains."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch


class BatchPrefetcher:
    """Wrap an iterable of (x, y) CPU tensor batches; iterate to get them on `device`.

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
            self._next = tuple(
                (t if t.is_pinned() else t.pin_memory()).to(self.device, non_blocking=True) for t in batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if not self._cuda:
            return tuple(t.to(self.device) for t in next(self._it))
        if self._done:
            raise StopIteration
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self._stream)
        batch = self._next
        for t in batch:
            t.record_stream(current)
        self._preload()
        return batch
