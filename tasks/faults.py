"""--fault_injection: faults on purpose, for the tests of monitor_process.py and the trainer's fault policy.

They fire only in the first process of a run (not after --resume), so a supervised run that restarts once gets
past them, as it would past a real transient fault:
- ``sleep:rank=R,iter=I,seconds=S``: rank R sleeps S seconds before the forward of iteration I (1-based), so
  the other ranks' next collective times out (--dist_timeout_s) or the heartbeat goes stale;
- ``spike:from=I,to=J``: iterations I..J train on corrupted targets (a random permutation of the vocabulary
  applied to them), which raises the loss well above its median: a loss spike.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

KINDS = ("sleep", "spike")


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
