"""BucketSync: the one owner of a bucket's grad-sync state machine.

A bucket has three faces, each with one job:
- `Bucket` (parallel/param_and_grad_buffer.py): where it lives, a padded slice of the flat buffers (layout only);
- `GradBucket` (parallel/comm_hooks/bucket.py): what a comm hook and the optimizer see of it (grads, params,
  group, shard, scale);
- `BucketSync` (here): when it is reduced. Its status changes only through the methods below, each of which
  refuses a transition its state does not allow. The DDP decides the launch order and the streams; it asks the
  bucket for the transition.

    RESET --grad_ready() of its last param, or force_ready()--> READY --start(future)--> STARTED
    STARTED --finish()--> FINISHED;  reset(): any state but STARTED --> RESET (a new step)

ZeRO-1's param all-gather is a second, independent handle per bucket (start_gather / wait_gather): it runs
between the optimizer step and the next forward, while the grad status is FINISHED or RESET.
"""
from __future__ import annotations

import enum

import torch


class SyncStatus(enum.IntEnum):
    RESET = 0  # grads being accumulated (or nothing yet)
    READY = 1  # every param reported its grad in the last micro-batch (or finish_grad_sync forced it)
    STARTED = 2  # the comm hook was launched; its future is pending
    FINISHED = 3  # the future was waited: grad_data holds the reduced grads


class BucketSync:
    """The grad-sync state of one bucket (see the module docstring); `index` is its global launch index."""

    __slots__ = ("index", "n_params", "status", "_ready", "_future", "_gather")

    def __init__(self, index: int, n_params: int):
        self.index, self.n_params = index, n_params
        self.status = SyncStatus.RESET
        self._ready: set = set()
        self._future: torch.futures.Future | None = None
        self._gather = None

    def _require(self, action: str, *allowed: SyncStatus) -> None:
        if self.status not in allowed:
            raise RuntimeError(f"bucket {self.index}: cannot {action} in state {self.status.name} "
                               f"(allowed: {', '.join(s.name for s in allowed)})")

    @property
    def in_flight(self) -> bool:
        return self.status == SyncStatus.STARTED

    @property
    def reduced(self) -> bool:
        """The hook was launched (STARTED or FINISHED): a grad arriving now would miss the reduction."""
        return self.status >= SyncStatus.STARTED

    def reset(self) -> None:
        """A new step: forget the ready params and the finished future."""
        if self.in_flight:
            raise RuntimeError(f"bucket {self.index}: reset while its reduction is in flight; call "
                               "finish_grad_sync() first")
        self.status, self._future = SyncStatus.RESET, None
        self._ready.clear()

    def grad_ready(self, param) -> bool:
        """`param`'s grad is complete for this step; True when that made the whole bucket READY."""
        self._require("take a ready grad", SyncStatus.RESET, SyncStatus.READY)
        if self.status == SyncStatus.READY:
            return False  # a param reported twice (used twice in the graph): already counted
        self._ready.add(param)
        if len(self._ready) < self.n_params:
            return False
        self.status = SyncStatus.READY
        return True

    def force_ready(self) -> None:
        """finish_grad_sync(): a bucket whose params did not all report (unused params) is reduced as it is."""
        self._require("be forced ready", SyncStatus.RESET, SyncStatus.READY)
        self.status = SyncStatus.READY

    def start(self, future: torch.futures.Future) -> None:
        """The comm hook was launched on this bucket and returned `future`."""
        self._require("start its reduction", SyncStatus.READY)
        self._future, self.status = future, SyncStatus.STARTED

    def finish(self) -> None:
        """Wait for the reduction (a no-op when it was already waited)."""
        self._require("finish its reduction", SyncStatus.STARTED, SyncStatus.FINISHED)
        if self.status == SyncStatus.STARTED:
            self._future.wait()
            self._future, self.status = None, SyncStatus.FINISHED

    # ----- ZeRO-1 param all-gather -----
    def start_gather(self, work) -> None:
        if self._gather is not None:
            raise RuntimeError(f"bucket {self.index}: a param gather is already pending")
        self._gather = work

    def wait_gather(self) -> None:
        if self._gather is not None:
            self._gather.wait()
            self._gather = None
