"""ResumableBatchSampler: rank-strided micro-batches from one seeded permutation per epoch, resumable."""
from __future__ import annotations

from typing import Iterator

import numpy as np


class ResumableBatchSampler:
    """Yields lists of batch_size sample indices for this rank, forever.

    Global order (identical on every rank, independent of world_size):
    1. Epoch e shuffles range(num_samples) with np.random.default_rng(seed + e); its first
       M = num_samples // batch_size * batch_size positions form M / batch_size micro-batches
       (the tail shorter than a micro-batch is dropped).
    2. The micro-batches of all epochs, in order, form one stream numbered g = 0, 1, 2, ...;
       micro-batch g goes to rank g % world_size. So 1 rank with 4 micro-batches per step and
       2 ranks with 2 each see the same samples in every optimizer step, across epochs too.
    3. The state is the global stream position: {"epoch", "consumed_micro_batches"} (within the epoch,
       all ranks together). It can be loaded under another world_size.

    A loader with workers reads batch indices ahead of training, so what was yielded is not what was
    trained on. The trainer therefore keeps the absolute number of micro-batches the run has consumed (all
    ranks, counted from the run's first step, carried through every checkpoint) and saves
    state_at(consumed). A position is never counted relative to where this process started: a count
    relative to the last resume, added to a position that already includes that resume, shifts the data
    of every later checkpoint.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1, world_size >= 1 and 0 <= rank < world_size, got "
                             f"batch_size={batch_size}, rank={rank}, world_size={world_size}")
        if num_samples < batch_size:
            raise ValueError(f"the dataset has {num_samples} samples, fewer than one micro-batch of "
                             f"--batch_size={batch_size}: lower --batch_size or --max_seq_len, or add data")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.batches_per_epoch = num_samples // batch_size
        self._start = 0  # global micro-batch position of the stream at construction / last load
        self._yielded = 0  # micro-batches this rank has yielded since _start
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng(self.seed + epoch).permutation(self.num_samples)
            self._perm_epoch = epoch
        return self._perm

    def micro_batch(self, g: int) -> list[int]:
        """The sample indices of global micro-batch g."""
        epoch, m = divmod(g, self.batches_per_epoch)
        perm = self._permutation(epoch)
        return perm[m * self.batch_size:(m + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            g = self._start + self._yielded * self.world_size + self.rank
            self._yielded += 1  # counted before the yield: the consumer may never resume this generator
            yield self.micro_batch(g)

    @property
    def position(self) -> int:
        """The global stream position after what this rank has yielded (every rank at the same step)."""
        return self._start + self._yielded * self.world_size

    def state_at(self, consumed: int) -> dict:
        """The state after `consumed` micro-batches of the global stream (absolute, all ranks together)."""
        if consumed < 0:
            raise ValueError(f"consumed micro-batches must be >= 0, got {consumed}")
        epoch, within = divmod(consumed, self.batches_per_epoch)
        return {"epoch": epoch, "consumed_micro_batches": within}

    def state_dict(self) -> dict:
        """The state after what this rank has yielded (a loader reading ahead: use state_at instead)."""
        return self.state_at(self.position)

    def check_resume(self, saved: dict) -> None:
        """Refuse a saved position of another kind of stream (a mix's): this one is the global micro-batch count
        alone, so a checkpoint of the same data continues from any such state."""
        if saved.get("kind") is not None:
            raise ValueError(f"this run's checkpoint holds the data position of a mix (--data_mix, sources "
                             f"{sorted(saved.get('sources', {}))}), which one --data_dir cannot take over: resume with "
                             f"the run's own --data_mix, or start a new run from these weights with --init_from")

    def metrics_at(self, consumed: int) -> dict[str, float]:
        """Per-source data metrics of a log line: none for one source (its position is the step itself)."""
        return {}

    @staticmethod
    def absolute_position(state: dict, batches_per_epoch: int) -> int:
        return int(state["epoch"]) * batches_per_epoch + int(state["consumed_micro_batches"])

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position: the next micro-batches are exactly those an unbroken run gets."""
        within = int(state["consumed_micro_batches"])
        if not 0 <= within <= self.batches_per_epoch:
            raise ValueError(f"sampler state {state} does not fit this dataset ({self.batches_per_epoch} "
                             f"micro-batches per epoch): was the data, --batch_size or --max_seq_len changed?")
        self._start = self.absolute_position(state, self.batches_per_epoch)
        self._yielded = 0
