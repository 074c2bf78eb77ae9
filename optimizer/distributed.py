"""ZeRO-1: the distributed optimizer shards fp32 main params and Adam state over data-parallel ranks.

Each rank owns the contiguous 1/world slice ``bucket.shard_range(rank)`` of every bucket, whatever the
param boundaries (optimizer/range_map.py maps shards to param slices, with a worked example).

Shard storage choice: per bucket, one flat fp32 tensor for the rank's shard (``Region.main``, optimizer/regions.py), with
one view per param slice. The flat tensor lets the triton kernel (optimizer/fused_adamw.py) update the
whole shard, m, v and the model's param buffer slice in one launch per bucket (the torch path: one
cast copy per bucket); the per-slice views carry the per-param state and put each slice in the
decayed or the undecayed set, so a 1-D param gets no weight decay even where it shares a bucket (or
a shard) with 2-D params. Padding elements belong to no slice and carry no saved state (the triton
kernel runs over them: zero grads keep them zero).

One step (after ``ddp.finish_grad_sync()``, which reduce-scattered the grads into each rank's shard):
1. fp16: unscale the shard and check it for inf/NaN; one all-reduce (MAX) of the flag, one host read.
2. Global grad norm: sum of the shards' squared norms, all-reduced (each element counted once).
3. Clip, AdamW on the shard, cast the shard into the model's param buffer slice.
4. ``ddp.start_param_sync(overlap=--overlap_param_gather)`` all-gathers every bucket's shards into
   the param buffer; without the overlap it is finished before step() returns, with it the next
   forward waits for each bucket just before the first module that uses it.
"""
from __future__ import annotations

from optimizer.mixed_precision import MixedPrecisionOptimizer
from parallel.comm_hooks.bucket import GradBucket


class DistributedOptimizer(MixedPrecisionOptimizer):
    """ZeRO-1 over the DDP's buckets (built for a DDP whose config has use_distributed_optimizer=True)."""

    sharded = True

    def _region_range(self, bucket: GradBucket) -> tuple[int, int]:
        """This rank's shard of the bucket, local to the bucket."""
        return bucket.shard_range()

    def _after_update(self) -> None:
        """All-gather the updated shards (start_param_sync waits for them itself unless they overlap)."""
        self.ddp.start_param_sync(overlap=self.cfg.overlap_param_gather)
