"""Run a function in N gloo processes on the CPU and fail with the child's traceback.

Algorithm:
  1. The parent hosts a TCPStore on an OS-chosen port (port 0), so concurrent test runs never race for a port.
  2. Children start through a forkserver that has torch preloaded (cheap to fork, safe with threads).
     Each child sets the torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and
     TORCHELASTIC_USE_AGENT_STORE=True so every rank joins the parent's store as a client, calls
     parallel.dist.init_distributed(device="cpu"), runs fn(ctx, *args) and reports ("ok", result) or
     ("error", traceback) through a queue.
  3. The parent waits; after the first failure it gives the others a short grace period, then kills them,
     and raises with every child's traceback.
"""
from __future__ import annotations

import os
import queue as queue_mod
import sys
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

_CTX = None


def _mp_context():
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch", "torch.distributed"])
    return _CTX


def _child(rank: int, world_size: int, port: int, fn: Callable, args: tuple, q, timeout_s: int, device: str) -> None:
    # device "cuda": every rank on GPU 0 with gloo (tests/gpu's several-ranks-on-one-GPU tier)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(0 if device == "cuda" else rank),
        LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    torch.set_num_threads(1)
    try:
        from parallel.dist import destroy, init_distributed

        ctx = init_distributed(device=device, timeout_s=timeout_s, backend="gloo")
        try:
            result = fn(ctx, *args)
        finally:
            destroy()
        q.put((rank, "ok", result))
    except BaseException:  # report everything, including assertion failures, to the parent
        q.put((rank, "error", traceback.format_exc()))


def run_dist(fn: Callable, world_size: int, *args: Any, timeout_s: float = 60.0, dist_timeout_s: int = 30,
             device: str = "cpu") -> list:
    """Run fn(ctx, *args) on world_size gloo ranks (on the CPU, or all on GPU 0 with device="cuda"); return the
    per-rank results (rank order) or raise."""
    store = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=dist_timeout_s), wait_for_workers=False)
    ctx = _mp_context()
    q = ctx.Queue()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.insert(0, root)
    procs = [ctx.Process(target=_child, args=(r, world_size, store.port, fn, args, q, dist_timeout_s, device),
                         daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    first_error_at = None
    while len(results) + len(errors) < world_size:
        now = time.monotonic()
        if now > deadline or (first_error_at is not None and now > first_error_at + 5.0):
            break
        try:
            rank, status, payload = q.get(timeout=0.2)
        except queue_mod.Empty:
            dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in results and r not in errors]
            for r in dead:
                if procs[r].exitcode not in (0, None):
                    errors[r] = f"rank {r} died with exit code {procs[r].exitcode} before reporting"
                    first_error_at = first_error_at or time.monotonic()
            continue
        if status == "ok":
            results[rank] = payload
        else:
            errors[rank] = payload
            first_error_at = first_error_at or time.monotonic()
    for p in procs:
        p.join(timeout=2.0)
        if p.is_alive():
            p.kill()
            p.join()
    missing = [r for r in range(world_size) if r not in results and r not in errors]
    if errors or missing:
        parts = [f"--- rank {r} ---\n{tb}" for r, tb in sorted(errors.items())]
        if missing:
            parts.append(f"ranks {missing} did not finish within {timeout_s} s (hang?)")
        raise AssertionError("distributed test failed:\n" + "\n".join(parts))
    return [results[r] for r in range(world_size)]

