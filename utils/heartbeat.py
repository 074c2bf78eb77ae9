"""A liveness file for monitor_process.py: the training loop beats, the supervisor reads the age.

The file is small JSON ({"time": unix seconds, "iter": int, "pid": int}) replaced atomically, so a reader
never sees a half-written one. It is not fsync'ed: it only has to be visible, not to survive a power loss.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from utils.fileio import atomic_write_text


class Heartbeat:
    """`Heartbeat(path).beat(iter)` records that the run is alive at `iter`.

    min_interval_s throttles writes (a beat sooner than that after the last written one is skipped), so it
    can be called every iteration at no cost.
    """

    def __init__(self, path: str | os.PathLike, min_interval_s: float = 0.0):
        self.path = Path(path)
        self.min_interval_s = float(min_interval_s)
        self._last = -float("inf")

    def beat(self, iter: int, force: bool = False) -> bool:
        """Write the heartbeat; returns whether it was written (False when throttled)."""
        now = time.time()
        if not force and now - self._last < self.min_interval_s:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"time": now, "iter": int(iter), "pid": os.getpid()}),
                          durable=False)
        self._last = now
        return True


def read_heartbeat(path: str | os.PathLike) -> dict | None:
    """The last heartbeat written to `path`, or None if there is none (or it cannot be read)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("time"), (int, float)):
        return None
    return obj
