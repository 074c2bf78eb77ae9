"""--fault_injection: faults on purpose, for the tests of monitor_process.py and the trainer's fault policy.

The seam: train.py wraps the task in a FaultInjectingTask when the flag is given, so the Trainer's step has no
fault branch; the wrapper's stream makes the fault happen as the trainer pulls micro-batches. Faults fire only in
the first process of a run (train.py does not wrap on --resume), so a supervised run that restarts once gets past
them, as it would past a real transient fault:
- ``sleep:rank=R,iter=I,seconds=S``: rank R sleeps S seconds before the forward of iteration I (1-based), so
  the other ranks' next collective times out (--dist_timeout_s) or the heartbeat goes stale;
- ``spike:from=I,to=J``: iterations I..J train on corrupted targets (a random permutation of the vocabulary
  applied to them), which raises the loss well above its median: a loss spike.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch



@dataclass(frozen=True)
class Fault:
    kind: str
    args: dict

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        kind, _, rest = spec.partition(":")
        try:
            args = {k: float(v) for k, v in (item.split("=", 1) for item in rest.split(",") if item)}
        except ValueError:
            args = None
        need = {"sleep": {"rank", "iter", "seconds"}, "spike": {"from", "to"}}.get(kind)
        if need is None or args is None or set(args) != need:
            raise ValueError(f"--fault_injection={spec!r} is not one of sleep:rank=R,iter=I,seconds=S or "
                             f"spike:from=I,to=J (tests only)")
        return cls(kind, args)

    def before_step(self, iteration: int, rank: int) -> None:
        """Called before the forward of `iteration` (1-based)."""
        if self.kind == "sleep" and iteration == int(self.args["iter"]) and rank == int(self.args["rank"]):
            time.sleep(self.args["seconds"])

    def corrupts(self, iteration: int) -> bool:
        return self.kind == "spike" and int(self.args["from"]) <= iteration <= int(self.args["to"])

    @staticmethod
    def corrupt_targets(targets: torch.Tensor, vocab_size: int, iteration: int) -> torch.Tensor:
        """Targets mapped through a seeded permutation of the vocabulary (-100 stays -100)."""
        g = torch.Generator().manual_seed(iteration)
        perm = torch.randperm(vocab_size, generator=g).to(targets.device)
        return torch.where(targets >= 0, perm[targets.clamp(min=0)], targets)


class _FaultyStream:
    """The task's stream (a tasks.base.DataStream), with the fault applied as micro-batches are pulled (a run's
    first process starts at micro-batch 0, so the k-th pull belongs to iteration k // micro_batches_per_step + 1)."""

    def __init__(self, inner, fault: Fault, micro_batches_per_step: int, rank: int, vocab_size: int):
        self.inner, self.fault, self.rank, self.vocab_size = inner, fault, rank, vocab_size
        self.per_step, self.pulled = micro_batches_per_step, 0

    def __iter__(self):
        return self

    def __next__(self):
        iteration = self.pulled // self.per_step + 1
        if self.pulled % self.per_step == 0:
            self.fault.before_step(iteration, self.rank)
        self.pulled += 1
        batch = next(self.inner)
        return self._corrupted(batch, iteration) if self.fault.corrupts(iteration) else batch

    def _corrupted(self, batch, iteration: int):
        if isinstance(batch, tuple):  # pretraining's (x, y)
            return (batch[0], Fault.corrupt_targets(batch[1], self.vocab_size, iteration), *batch[2:])
        return dataclasses.replace(batch, targets=Fault.corrupt_targets(batch.targets, self.vocab_size, iteration))

    def seek(self, consumed_micro_batches: int) -> None:
        self.inner.seek(consumed_micro_batches)

    def state_at(self, consumed_micro_batches: int) -> dict:
        return self.inner.state_at(consumed_micro_batches)

    def metrics_at(self, consumed_micro_batches: int) -> dict[str, float]:
        return self.inner.metrics_at(consumed_micro_batches)

    def check_resume(self, saved: dict) -> None:
        self.inner.check_resume(saved)


class FaultInjectingTask:
    """`task` (a tasks.base.Task) with `fault` injected into its stream (see the module docstring); everything else
    is the task's. (tasks/config.py validates the flag with Fault.parse, so this module imports no other part of
    tasks/: that keeps tasks.config -> tasks.faults free of a cycle.)"""

    def __init__(self, task, fault: Fault, micro_batches_per_step: int, rank: int, vocab_size: int):
        self.task = task
        self.name, self.normalization, self.seq_len = task.name, task.normalization, task.seq_len
        self.shown_metrics = task.shown_metrics
        self.stream = _FaultyStream(task.stream, fault, micro_batches_per_step, rank, vocab_size)

    def loss(self, model, batch):
        return self.task.loss(model, batch)

    def tokens_in(self, batch) -> int:
        return self.task.tokens_in(batch)

    def evaluate(self, model) -> dict[str, float]:
        return self.task.evaluate(model)

    def sample(self, model) -> str | None:
        return self.task.sample(model)
