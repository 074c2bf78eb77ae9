"""The contract between the DDP and its comm hooks: what a hook sees of one bucket.

The DDP builds one GradBucket per bucket of its buffers and hands it to `hook(state, bucket)` when the bucket's
gradients are ready. `index` is the bucket's place in the DDP's launch order (buffers in creation order, buckets
in buffer order), the same on every rank and in every step, so per-bucket state (error feedback, callbacks) is
keyed by it. A worked example, world 2, one bucket of 256 elements holding w (shape (8, 16)) then b (shape (64,)):

    params: w start 0 end 128, b start 128 end 192 (local to the bucket; [192, 256) is padding)
    shard_range(0) = (0, 128), shard_range(1) = (128, 256)
    w.view(bucket.grad_data) is w's gradient as an (8, 16) tensor (a view: writes go into the bucket)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from parallel.param_and_grad_buffer import shard_range


@dataclass(frozen=True, eq=False)
class BucketParam:
    """One param's slice of its bucket: elements [start, end) of the bucket's flat tensors, local to the bucket."""

    name: str
    param: nn.Parameter
    shape: torch.Size
    start: int
    end: int

    @property
    def numel(self) -> int:
        return self.end - self.start

    def view(self, flat: torch.Tensor) -> torch.Tensor:
        """This param's part of a bucket-sized flat tensor (grad_data, or a with_grad copy), shaped like the param."""
        return flat[self.start:self.end].view(self.shape)


@dataclass(frozen=True, eq=False)
class GradBucket:
    """What a comm hook sees of one bucket (see the module docstring).

    grad_data: the bucket's flat, padded gradients (the hook reduces them in place or returns a tensor that the
      wrappers copy back); grad_scale: the factor the reduction applies (1/world for a mean); group: the process
      group (None: one process, no collective); param_data: the bucket's flat params (read by the optimizer and
      the ZeRO-1 gather; hooks leave it alone); params: each param's slice, in bucket order.
    """

    index: int
    grad_data: torch.Tensor
    param_data: torch.Tensor
    params: tuple[BucketParam, ...]
    grad_scale: float | torch.Tensor
    group: Any
    rank: int
    world_size: int

    @property
    def numel(self) -> int:
        return self.grad_data.numel()

    def shard_range(self, rank: int | None = None) -> tuple[int, int]:
        """Elements [start, end) of this bucket owned by `rank` (default: this rank), local to the bucket."""
        return shard_range(self.numel, self.world_size, self.rank if rank is None else rank)

    def with_grad(self, grad_data: torch.Tensor, grad_scale: float | torch.Tensor) -> GradBucket:
        """The same bucket with another grad tensor of the same numel (compression wrappers hand it inward)."""
        assert grad_data.numel() == self.numel, f"bucket {self.index}: {grad_data.numel()} != {self.numel}"
        return dataclasses.replace(self, grad_data=grad_data, grad_scale=grad_scale)


@runtime_checkable
class HookState(Protocol):
    """What every comm hook's state offers: the checkpoint saves it per rank, the log reports its metrics."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def metrics(self) -> dict[str, float]: ...


Hook = Callable[[Any, GradBucket], torch.futures.Future]
# Called with a bucket as soon as its reduction is done (DistributedDataParallel.register_post_reduce).
PostReduce = Callable[[GradBucket], None]


class CommHook(NamedTuple):
    """A registered comm hook: `hook(state, bucket) -> Future[Tensor]` and the state it is called with."""

    state: HookState
    hook: Hook
