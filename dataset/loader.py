"""The training data stream: sampler -> dataset reads -> collate -> (worker processes) -> device.

`BatchStream` yields this rank's micro-batches forever, already on the device. Its position is set from
outside (`seek`): the trainer owns the absolute count of consumed micro-batches, so reading ahead (workers,
prefetch) never moves the saved data position.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from dataset.config import DataConfig
from dataset.mixture_sampler import MixtureBatchSampler
from dataset.prefetch import BatchPrefetcher
from dataset.sampler import ResumableBatchSampler

Sampler = ResumableBatchSampler | MixtureBatchSampler  # state_at, load_state_dict, check_resume, metrics_at, iter


def stack_windows(samples: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pretraining's collate: (x, y) windows stacked into (B, T) batches."""
    xs, ys = zip(*samples)
    return torch.stack(xs), torch.stack(ys)


class BatchStream:
    """This rank's micro-batches from a resumable sampler over a dataset, moved to `device`.

    1. The sampler yields index lists (rank-strided, seeded, from `seek`'s position): one directory's
       (ResumableBatchSampler) or a mix's (MixtureBatchSampler).
    2. `collate` turns the dataset items of one index list into a batch (a tuple of tensors or a batch
       dataclass), in this process, or in `num_workers` DataLoader workers that read ahead.
    3. On CUDA with `prefetch`, the next batch is pinned and copied on a side stream while this one trains;
       otherwise each batch is moved when taken.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, collate: Callable, device: torch.device,
                 num_workers: int = 0, prefetch: bool = True):
        self.dataset, self.sampler, self.device = dataset, sampler, device
        self.num_workers, self.prefetch = num_workers, prefetch
        self.collate = collate  # module-level or functools.partial, so worker processes can unpickle it
        self._it = None
        self._sought = 0  # the absolute position of the last seek
        self._taken = 0  # micro-batches this rank has taken since (what training consumed, not what was read ahead)

    @classmethod
    def from_config(cls, dataset: Dataset, sampler: Sampler, collate: Callable,
                    device: torch.device, data: DataConfig) -> "BatchStream":
        return cls(dataset, sampler, collate, device, data.num_workers, data.prefetch)

    def seek(self, consumed_micro_batches: int) -> None:
        """Continue after `consumed_micro_batches` of the global stream (absolute); drops what was read ahead."""
        self.sampler.load_state_dict(self.sampler.state_at(consumed_micro_batches))
        self._it = None
        self._sought, self._taken = consumed_micro_batches, 0

    @property
    def consumed_micro_batches(self) -> int:
        """The global micro-batches consumed so far (all ranks take the same number per step): the last seek's
        position plus what was taken since, for a task that needs the position (a mix's eval weights)."""
        return self._sought + self._taken * self.sampler.world_size

    def state_at(self, consumed_micro_batches: int) -> dict:
        return self.sampler.state_at(consumed_micro_batches)

    def check_resume(self, saved_state: dict) -> None:
        """Raise ValueError when this stream cannot continue the one `saved_state` (a state_at record) came from."""
        self.sampler.check_resume(saved_state)

    def metrics_at(self, consumed_micro_batches: int) -> dict[str, float]:
        """The data metrics of a log line after `consumed_micro_batches` (a mix: tokens/NAME, epoch/NAME)."""
        return self.sampler.metrics_at(consumed_micro_batches)

    def _read(self, indices: list[int]):
        return self.collate([self.dataset[i] for i in indices])

    def _batches(self):
        if self.num_workers == 0:
            return map(self._read, iter(self.sampler))
        # The sampler runs here and hands whole index lists to the workers, which read and collate ahead.
        return iter(DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=self.collate,
                               num_workers=self.num_workers, pin_memory=self.device.type == "cuda"))

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = iter(BatchPrefetcher(self._batches(), self.device, enabled=self.prefetch))
        batch = next(self._it)
        self._taken += 1
        return batch
