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

    A DataLoader with workers reads batch indices ahead of training. Then call
    state_dict(local_consumed=K) with the number of micro-batches this rank has really trained on since
    the sampler's start (or its last load_state_dict); state_dict() without it counts what was yielded.
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

    def state_dict(self, local_consumed: int | None = None) -> dict:
        consumed = self._yielded if local_consumed is None else local_consumed
        g = self._start + consumed * self.world_size
        epoch, within = divmod(g, self.batches_per_epoch)
        return {"epoch": epoch, "consumed_micro_batches": within}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position: the next micro-batches are exactly those an unbroken run gets."""
        within = int(state["consumed_micro_batches"])
        if not 0 <= within <= self.batches_per_epoch:
            raise ValueError(f"sampler state {state} does not fit this dataset ({self.batches_per_epoch} "
                             f"micro-batches per epoch): was the data, --batch_size or --max_seq_len changed?")
        self._start = int(state["epoch"]) * self.batches_per_epoch + within
        self._yielded = 0
