"""Communication hooks `hook(state, bucket) -> torch.futures.Future[Tensor]` for the hand-written DDP."""
from parallel.comm_hooks.bucket import BucketParam, CommHook, GradBucket, Hook, HookState, PostReduce
from parallel.comm_hooks.default import (
    DefaultHookState,
    allreduce_hook,
    bf16_compress_wrapper,
    reduce_scatter_hook,
    stream_wrapper,
)
from parallel.comm_hooks.powersgd import PowerSGDState, powersgd_hook
from parallel.comm_hooks.registry import build_hook

__all__ = ["BucketParam", "CommHook", "DefaultHookState", "GradBucket", "Hook", "HookState", "PostReduce",
           "PowerSGDState", "allreduce_hook", "bf16_compress_wrapper", "build_hook", "powersgd_hook",
           "reduce_scatter_hook", "stream_wrapper"]
