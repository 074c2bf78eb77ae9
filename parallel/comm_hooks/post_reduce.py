"""post_reduce: a comm-hook wrapper that runs a callback on a bucket as soon as its reduction is done.

The wrapper runs the inner hook (allreduce, reduce_scatter, bf16 compression, ...) and chains a
callback on its future: when the bucket's reduced grads are ready, ``state.callback(bucket)`` runs,
on the stream the DDP launched the hook from (its comm stream on CUDA), overlapping the rest of the
backward. The DDP waits on the returned future in ``finish_grad_sync()``, so every callback has been
issued by then. The optimizer uses it two ways:
- ``--overlap_optim_step``: the callback steps the bucket's params (its shard with ZeRO-1);
- otherwise (bf16/fp32, no loss scaling): the callback computes the bucket's per-param grad norms, so
  the step's global norm is a sum of norms already computed during the backward.

parallel/ never imports optimizer/: the optimizer hands its callback in through the state.
"""
from __future__ import annotations

from typing import Callable

import torch

from parallel.comm_hooks.bucket import GradBucket, Hook


class PostReduceState:
    """Inner (state, hook) plus the per-bucket callback.

    It forwards state_dict(), load_state_dict() and metrics() to the inner state, so a checkpoint of the hook
    state and ``ddp.comm_hook.state.metrics()`` are the same whether or not the optimizer wrapped the hook.
    """

    def __init__(self, inner_hook: Hook, inner_state, callback: Callable[[GradBucket], None]):
        self.inner_hook = inner_hook
        self.inner_state = inner_state
        self.callback = callback

    def state_dict(self) -> dict:
        return self.inner_state.state_dict() if hasattr(self.inner_state, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        if hasattr(self.inner_state, "load_state_dict"):
            self.inner_state.load_state_dict(state)

    def metrics(self) -> dict[str, float]:
        return self.inner_state.metrics() if hasattr(self.inner_state, "metrics") else {}


def post_reduce_hook(state: PostReduceState, bucket: GradBucket) -> torch.futures.Future:
    """Reduce with the inner hook, then call ``state.callback(bucket)``; the future keeps the inner value."""
    fut = state.inner_hook(state.inner_state, bucket)

    def call_then_pass(f: torch.futures.Future):
        value = f.value()
        state.callback(bucket)
        return value

    return fut.then(call_then_pass)
