"""Default communication hooks: `hook(state, bucket) -> torch.futures.Future[Tensor]`.

`bucket` is a GradBucket (parallel/comm_hooks/bucket.py). A hook reduces `bucket.grad_data` across
`bucket.group` (None or world 1: no collective) and completes its future with the reduced tensor. Scaling by
`bucket.grad_scale` (1/world by default: a mean) happens before the reduction when `state.prescale` (the
default: sums of pre-divided grads cannot overflow), else after it.
Wrappers compose: `bf16_compress_wrapper(allreduce_hook)`, `stream_wrapper(reduce_scatter_hook)`, ...
State objects hold no process group (the group comes with the bucket), so they can go into checkpoints.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from parallel.collectives import completed_future, reduce_scatter, work_future
from parallel.comm_hooks.bucket import GradBucket, Hook


class DefaultHookState:
    """State of the default hooks: only where the grad scale is applied."""

    def __init__(self, prescale: bool = True):
        self.prescale = prescale

    def state_dict(self) -> dict:
        return {"prescale": self.prescale}

    def load_state_dict(self, state: dict) -> None:
        self.prescale = bool(state["prescale"])

    def metrics(self) -> dict[str, float]:
        """Nothing to report (the same call on every hook state: PowerSGDState reports its compression)."""
        return {}


def apply_scale(t: torch.Tensor, scale) -> torch.Tensor:
    """t *= scale in place, skipping the kernel for a Python 1.0 (a tensor scale never forces a host sync)."""
    if isinstance(scale, torch.Tensor) or scale != 1.0:
        t.mul_(scale)
    return t


def _no_collective(bucket: GradBucket) -> bool:
    return bucket.group is None or bucket.world_size == 1


def allreduce_hook(state: DefaultHookState, bucket: GradBucket) -> torch.futures.Future:
    """Sum grad_data over the group (scaled by grad_scale); every rank gets the whole reduced bucket."""
    t, scale = bucket.grad_data, bucket.grad_scale
    if state.prescale:
        apply_scale(t, scale)
    if _no_collective(bucket):
        return completed_future(t if state.prescale else apply_scale(t, scale))
    work = dist.all_reduce(t, group=bucket.group, async_op=True)
    if state.prescale:
        return work_future(work).then(lambda _: t)
    return work_future(work).then(lambda _: apply_scale(t, scale))


def reduce_scatter_hook(state: DefaultHookState, bucket: GradBucket) -> torch.futures.Future:
    """Reduce-scatter grad_data in place: afterwards only bucket.shard_range(rank) holds the reduced grad (ZeRO-1).

    The elements outside this rank's shard are left with local, unreduced values; read only the shard.
    """
    t, scale = bucket.grad_data, bucket.grad_scale
    if state.prescale:
        apply_scale(t, scale)
    if _no_collective(bucket):
        return completed_future(t if state.prescale else apply_scale(t, scale))
    start, end = bucket.shard_range()
    shard = t[start:end]
    work = reduce_scatter(shard, t, group=bucket.group, async_op=True)
    if state.prescale:
        return work_future(work).then(lambda _: t)

    def _post(_):
        apply_scale(shard, scale)
        return t

    return work_future(work).then(_post)


def _first_tensor(value) -> torch.Tensor:
    return value[0] if isinstance(value, (list, tuple)) else value


def bf16_compress_wrapper(hook: Hook) -> Hook:
    """Run `hook` on a bf16 copy of the bucket's grads, then copy the result back into grad_data.

    1. Scale grad_data by grad_scale in its own (fp32) precision, before the lossy cast.
    2. Cast to bf16 and run the inner hook on a bucket view holding the bf16 tensor (with grad_scale 1).
    3. When the inner future completes, copy the bf16 result back into grad_data (in place).
    A bucket whose grads are already bf16 goes straight to the inner hook.
    """

    def bf16_hook(state, bucket: GradBucket) -> torch.futures.Future:
        t = bucket.grad_data
        if t.dtype == torch.bfloat16:
            return hook(state, bucket)
        apply_scale(t, bucket.grad_scale)
        compressed = t.to(torch.bfloat16)
        fut = hook(state, bucket.with_grad(compressed, 1.0))

        def decompress(f):
            value = _first_tensor(f.value())
            if value.is_cuda:  # the bf16 tensor was allocated on another stream: keep it alive for this one
                value.record_stream(torch.cuda.current_stream(value.device))
            t.copy_(value)
            return t

        return fut.then(decompress)

    bf16_hook.__name__ = f"bf16_compress({getattr(hook, '__name__', 'hook')})"
    return bf16_hook


def stream_wrapper(hook: Hook) -> Hook:
    """Run `hook` on a side CUDA stream (its own, one per device); a plain call on the CPU.

    1. The side stream waits for the caller's stream (grads are finished).
    2. The inner hook runs under the side stream; an event marks the end of its launches there.
    3. The returned future's callback makes its stream wait on that event, so whoever waits on the
       future also sees work the inner hook queued on the side stream outside its own future.
    """
    streams: dict[torch.device, torch.cuda.Stream] = {}

    def stream_hook(state, bucket: GradBucket) -> torch.futures.Future:
        t = bucket.grad_data
        if not t.is_cuda:
            return hook(state, bucket)
        side = streams.get(t.device)
        if side is None:
            side = streams[t.device] = torch.cuda.Stream(device=t.device)
        side.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(side):
            fut = hook(state, bucket)
            done = torch.cuda.Event()
            done.record(side)

        def join(f):
            torch.cuda.current_stream(t.device).wait_event(done)
            return _first_tensor(f.value())

        return fut.then(join)

    stream_hook.__name__ = f"stream({getattr(hook, '__name__', 'hook')})"
    return stream_hook
