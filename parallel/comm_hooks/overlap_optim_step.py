"""overlap_optim_step: a comm-hook wrapper that steps a bucket's params as soon as its reduction is done.

The wrapper runs the inner hook (allreduce, reduce_scatter, bf16 compression, ...) and chains a
callback on its future: when the bucket's reduced grads are ready, ``state.callback(bucket)`` runs
the optimizer update for that bucket (its shard with ZeRO-1), overlapping the rest of the backward.
The DDP waits on the returned future in ``finish_grad_sync()``, so every bucket has stepped by then.

parallel/ never imports optimizer/: the optimizer hands its callback in through the state. The
callback must be exact per bucket (no global clip or loss scale); the optimizer checks that.
"""
from __future__ import annotations

from typing import Callable

import torch


class OverlapOptimStepState:
    """Inner (state, hook) plus the per-bucket step callback. Checkpoints carry the inner state only."""

    def __init__(self, inner_hook: Callable, inner_state, callback: Callable[[object], None]):
        self.inner_hook = inner_hook
        self.inner_state = inner_state
        self.callback = callback

    def state_dict(self) -> dict:
        inner = self.inner_state.state_dict() if hasattr(self.inner_state, "state_dict") else None
        return {"inner": inner}

    def load_state_dict(self, state: dict) -> None:
        if state.get("inner") is not None and hasattr(self.inner_state, "load_state_dict"):
            self.inner_state.load_state_dict(state["inner"])


def overlap_optim_step_hook(state: OverlapOptimStepState, bucket) -> torch.futures.Future:
    """Reduce with the inner hook, then call ``state.callback(bucket)``; the future keeps the inner value."""
    fut = state.inner_hook(state.inner_state, bucket)

    def step_then_pass(f: torch.futures.Future):
        value = f.value()
        state.callback(bucket)
        return value

    return fut.then(step_then_pass)
