"""Process-group setup: read the torchrun environment once and return an explicit DistContext.

Nothing else in the project reads RANK/WORLD_SIZE or calls dist.get_rank(); the context is passed around.
"""
from __future__ import annotations

import gc
import os
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist

_DEVICES = ("auto", "cpu", "cuda")
_MADE: list[weakref.ref] = []  # the process groups init_distributed created, for destroy() to check they are gone


@dataclass
class DistContext:
    """Who this process is: rank/world in the data-parallel group, its device and the group (None: no collectives)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    group: object | None
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Block until every rank arrives; a no-op without a process group."""
        if self.group is None:
            return
        if self.backend == "nccl":
            dist.barrier(group=self.group, device_ids=[self.device.index])
        else:
            dist.barrier(group=self.group)

    def max_over_ranks(self, value: int) -> int:
        """The largest `value` of any rank (a barrier too); `value` itself without a process group. The checkpoint's
        agreement: 0 when this rank's part went well, a failure code otherwise."""
        if self.group is None:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return int(t.item())


def _env_int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError as exc:
        raise ValueError(f"environment variable {key}={env[key]!r} is not an integer; launch with torchrun") from exc


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device not in _DEVICES:
        raise ValueError(f"device={device!r} is not one of {_DEVICES}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available; use --device=cpu (gloo) or run on a GPU machine")
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise ValueError(f"LOCAL_RANK={local_rank} but only {n} CUDA devices are visible; "
                         f"use --nproc_per_node<={n}")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", timeout_s: int = 600, env: Mapping[str, str] | None = None,
                     backend: str | None = None) -> DistContext:
    """Create the data-parallel process group from the torchrun environment.

    1. Read RANK, WORLD_SIZE, LOCAL_RANK once (from `env`, default os.environ). Without them: one process,
       group None, no collectives ever issued.
    2. Choose the device (auto: CUDA if available) and set it to LOCAL_RANK; NCCL on CUDA, gloo on the CPU.
       `backend="gloo"` on CUDA is for tests: several ranks on one GPU, with gloo's asynchronous collectives
       on CUDA tensors (NCCL refuses two ranks on one device).
    3. init_process_group with a timeout, so a hung collective raises instead of hanging forever
       (NCCL: async error handling tears the job down after the timeout).
    """
    env = os.environ if env is None else env
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}; set --dist_timeout_s")
    if "RANK" not in env or "WORLD_SIZE" not in env:
        local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        return DistContext(0, 1, local_rank, _pick_device(device, local_rank), None, None)
    rank, world_size = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
    dev = _pick_device(device, local_rank)
    if backend not in (None, "nccl", "gloo") or (backend == "nccl" and dev.type != "cuda"):
        raise ValueError(f"backend={backend!r} does not fit device {dev}; use nccl on CUDA or gloo")
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
        _MADE.append(weakref.ref(dist.group.WORLD))
    return DistContext(rank, world_size, local_rank, dev, dist.group.WORLD, backend)


def destroy() -> bool:
    """Tear down the process group and free it, so that its threads end while the interpreter is alive.

    Returns whether every group init_distributed made is gone (True without one). Idempotent.

    Why freeing matters: destroy_process_group() only unregisters the group; its C++ object, and with it gloo's
    worker threads, lives as long as a Python reference to it does (DistContext.group, every GradBucket.group).
    A gloo worker releases a finished collective a moment after the waiting thread went on, and with it the
    collective's tensors; a tensor whose Python object is already gone needs the GIL to be freed. If the
    interpreter is finalizing by then (a loaded machine delays the worker), taking the GIL ends the thread with
    pthread_exit, whose unwinding through C++ calls std::terminate: the process dies of SIGABRT, "terminate called
    without an active exception", after the run finished (bench/exit_abort.py reproduces it). Freed here, the
    group's destructor waits for its queued work and joins its threads, the GIL released, so that nothing is left
    to run during finalization. The caller drops its own references first (train.py's main drops the run, and
    the locals of a traceback); the cycles among our objects are collected here.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if not _MADE:
        return True
    gc.collect()
    alive = [ref for ref in _MADE if ref() is not None]
    _MADE[:] = alive
    return not alive
