"""The sample stream of a mix: MixtureDataset (the sources' training windows under one index) and
MixtureBatchSampler (rank-strided micro-batches of the blended stream, resumable from an absolute position).

Global order (identical on every rank, independent of world_size):
1. Sample n of the stream comes from source s(n) of the BlendSchedule (dataset/mixture.py) and is that source's
   o(n)-th sample (its own running count, across stages).
2. Source i reads its training windows epoch by epoch: its sample o is window perm_i(e)[o % W_i] with
   e = o // W_i, and perm_i(e) a permutation of its W_i windows seeded by (data_seed, crc32(NAME), e). So each
   source is shuffled on its own, a stage switch or another source's pace never moves it, and renaming or
   reordering other sources does not change its order.
3. Micro-batch g holds samples [g B, (g + 1) B) and goes to rank g % world_size, as ResumableBatchSampler does.
   Unlike it, no tail is dropped: a source that runs out starts its next epoch mid-micro-batch.

The position is the absolute number of consumed micro-batches (the trainer's); everything else follows from it
and the config in closed form. `state_at` records it with each source's count, epoch and window count and the
stage in force, so `check_resume` can refuse a resumed config that would not continue the same stream.
"""
from __future__ import annotations

import zlib
from fractions import Fraction
from typing import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset

from dataset.mixture import BlendSchedule, describe_shares

STATE_KIND = "mixture"


class MixtureDataset(Dataset):
    """ds[gid] for gid in [0, sum of the sources' sizes): source i's item gid - offsets[i]."""

    def __init__(self, sources: Sequence[Dataset]):
        self.sources = list(sources)
        self.offsets = np.concatenate(([0], np.cumsum([len(s) for s in self.sources]))).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, gid: int):
        i = int(np.searchsorted(self.offsets, gid, side="right")) - 1
        if not 0 <= i < len(self.sources):
            raise IndexError(f"index {gid} out of range for {len(self)} windows")
        return self.sources[i][int(gid - self.offsets[i])]


class MixtureBatchSampler:
    """Yields this rank's micro-batches (lists of MixtureDataset ids) of the blended stream, forever.

    `sizes[i]`: source i's training windows; `tokens_per_sample`: tokens trained per sample (for tokens/NAME);
    `log`: where the line announcing a source's new epoch goes (the rank that yields that sample prints it).
    """

    def __init__(self, schedule: BlendSchedule, sizes: Sequence[int], batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, tokens_per_sample: int = 1, log: Callable[[str], None] = print):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1, world_size >= 1 and 0 <= rank < world_size, got "
                             f"batch_size={batch_size}, rank={rank}, world_size={world_size}")
        if len(sizes) != len(schedule.names) or min(sizes) < 1:
            raise ValueError(f"every source needs >= 1 training window, got {dict(zip(schedule.names, sizes))}")
        self.schedule, self.names = schedule, schedule.names
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate(([0], np.cumsum(self.sizes))).astype(np.int64)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.tokens_per_sample, self.log = seed, tokens_per_sample, log
        self._start = 0  # global micro-batch position at construction / last load
        self._yielded = 0  # micro-batches this rank has yielded since _start
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def _perm(self, i: int, epoch: int) -> np.ndarray:
        """perm_i(epoch) (module docstring); two epochs per source are kept (the one running and the next)."""
        key = (i, epoch)
        if key not in self._perms:
            for old in [k for k in self._perms if k[0] == i and not epoch - 1 <= k[1] <= epoch + 1]:
                del self._perms[old]
            rng = np.random.default_rng([self.seed % 2**63, zlib.crc32(self.names[i].encode()), epoch])
            self._perms[key] = rng.permutation(int(self.sizes[i]))
        return self._perms[key]

    def samples(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, ordinals) of stream samples [start, stop): MixtureDataset ids and each one's source ordinal."""
        src, ords = self.schedule.assign(start, stop)
        ids = np.empty(stop - start, dtype=np.int64)
        for i in np.unique(src):
            at = np.flatnonzero(src == i)
            epochs, within = np.divmod(ords[at], self.sizes[i])
            for e in np.unique(epochs):
                sel = epochs == e
                ids[at[sel]] = self.offsets[i] + self._perm(int(i), int(e))[within[sel]]
        return ids, ords

    def micro_batch(self, g: int) -> list[int]:
        """The MixtureDataset ids of global micro-batch g."""
        return self.samples(g * self.batch_size, (g + 1) * self.batch_size)[0].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            g = self._start + self._yielded * self.world_size + self.rank
            self._yielded += 1  # counted before the yield: the consumer may never resume this generator
            start = g * self.batch_size
            ids, ords = self.samples(start, start + self.batch_size)
            self._announce_epochs(start, ids, ords)
            yield ids.tolist()

    def _announce_epochs(self, start: int, ids: np.ndarray, ords: np.ndarray) -> None:
        src = np.searchsorted(self.offsets, ids, side="right") - 1
        for j in np.flatnonzero((ords % self.sizes[src] == 0) & (ords > 0)):
            i, n = int(src[j]), start + int(j)
            step = n // self.schedule.samples_per_step + 1
            self.log(f"data: source {self.names[i]!r} has used all {int(self.sizes[i]):,} of its training windows; "
                     f"epoch {int(ords[j] // self.sizes[i]) + 1} starts at sample {n:,} (step {step})")

    # -- the position -----------------------------------------------------------------------

    def state_at(self, consumed: int) -> dict:
        """The state after `consumed` micro-batches of the global stream (absolute, all ranks together)."""
        if consumed < 0:
            raise ValueError(f"consumed micro-batches must be >= 0, got {consumed}")
        n = consumed * self.batch_size
        counts = self.schedule.counts(n)
        k = self.schedule.stage_of(max(n - 1, 0))  # the stage of the last consumed sample
        stage = self.schedule.spec.stages[k]
        return {"kind": STATE_KIND, "micro_batches": consumed, "samples": n, "data_seed": self.seed,
                "samples_per_step": self.schedule.samples_per_step, "stage": k, "stage_step": stage.step,
                "stage_mix": {name: str(s) for name, s in self.schedule.shares[k].items()},
                "sources": {name: {"samples": int(c), "epoch": int(c // w), "windows": int(w)}
                            for name, c, w in zip(self.names, counts, self.sizes)}}

    def load_state_dict(self, state: dict) -> None:
        """Continue after state["micro_batches"]: the next micro-batches are exactly those an unbroken run gets."""
        self._start = int(state["micro_batches"])
        self._yielded = 0

    def metrics_at(self, consumed: int) -> dict[str, float]:
        """tokens/NAME (trained tokens) and epoch/NAME (epochs, fractional) of every source, cumulative."""
        counts = self.schedule.counts(consumed * self.batch_size)
        out: dict[str, float] = {}
        for name, c, w in zip(self.names, counts, self.sizes):
            out[f"tokens/{name}"] = int(c) * self.tokens_per_sample
            out[f"epoch/{name}"] = float(c) / float(w)
        return out

    def check_resume(self, saved: dict) -> None:
        """Refuse (ValueError, one line) a saved position this config cannot continue exactly (see resume_mismatch)."""
        problem = resume_mismatch(saved, self)
        if problem:
            raise ValueError(problem)


def resume_mismatch(saved: dict, sampler: MixtureBatchSampler) -> str | None:
    """Why the stream of `sampler` would not continue the stream that `saved` (a state_at record) came from, or None.

    It continues exactly when, at the saved position n: every source has the same count and window count (the same
    data and position), the data seed is the same, and the stage that holds sample n is either the same stage as
    before (same start, same shares) or a stage that starts exactly at n (a stage added from the current step on).
    """
    if saved.get("kind") != STATE_KIND:
        return ("this run's checkpoint holds the data position of one --data_dir, and --data_mix cannot take it over: "
                "resume without --data_mix, or start a new run from these weights with --init_from")
    consumed = int(saved["micro_batches"])
    now = sampler.state_at(consumed)
    step = saved["samples"] // saved["samples_per_step"]
    if now["samples"] != saved["samples"]:
        return (f"the checkpoint is at {saved['samples']:,} samples ({consumed} micro-batches of "
                f"{saved['samples'] // max(consumed, 1)}), but --batch_size={sampler.batch_size} puts it at "
                f"{now['samples']:,}: keep --batch_size on --resume")
    if now["samples_per_step"] != saved["samples_per_step"]:
        return (f"a step is {now['samples_per_step']} samples now and was {saved['samples_per_step']} "
                f"(--gradient_accumulation_steps x --batch_size), and stages start at steps: keep "
                f"--gradient_accumulation_steps on --resume")
    if now["data_seed"] != saved["data_seed"]:
        return (f"--data_seed={now['data_seed']} differs from the run's {saved['data_seed']}, which orders every "
                f"source's epochs: keep --data_seed={saved['data_seed']} on --resume")
    gone = sorted(set(saved["sources"]) - set(now["sources"]))
    if gone:
        return (f"sources {gone} of the run are missing from --data_mix/--data_stages; they hold part of the data "
                f"position: keep every source, and leave it out of a new stage instead")
    for name, old in saved["sources"].items():
        new = now["sources"][name]
        if new["windows"] != old["windows"]:
            return (f"source {name!r} has {new['windows']:,} training windows now and had {old['windows']:,}: its "
                    f"data, --max_seq_len or --valid_ratio changed, so its epochs would be reshuffled; restore it, or "
                    f"start a new run with --init_from")
    n = now["samples"]
    schedule = sampler.schedule
    k = schedule.stage_of(n)
    if schedule.starts[k] < n:  # the stage of the next sample is already running: it must be the saved one
        shares = {name: str(s) for name, s in schedule.shares[k].items()}
        if schedule.spec.stages[k].step != saved["stage_step"] or shares != saved["stage_mix"]:
            old = describe_shares({m: Fraction(s) for m, s in saved["stage_mix"].items()})
            return (f"--resume at step {step} would change the mix in force (the stage from step {saved['stage_step']}:"
                    f" {old}) to the stage from step {schedule.spec.stages[k].step}: "
                    f"{describe_shares(schedule.shares[k])}; keep the stages up to step {step} as they were and add a "
                    f"stage instead, from step {step} or later (--data_stages='...;{step}:NAME:WEIGHT,...')")
    for name, old in saved["sources"].items():
        if now["sources"][name]["samples"] != old["samples"]:
            return (f"the stages before step {step} changed: source {name!r} would have supplied "
                    f"{now['sources'][name]['samples']:,} samples by now, the run read {old['samples']:,}; keep the "
                    f"stages up to step {step} as they were and add a stage instead")
    return None
