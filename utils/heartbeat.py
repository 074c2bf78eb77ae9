"""A liveness file for monitor_process.py: the training loop beats, the supervisor reads its age and section.

The file (<out_dir>/heartbeat.json) is small JSON replaced atomically, so a reader never sees a half-written
one::

    {"time": 1718000000.5, "iter": 120, "pid": 4242, "section": "checkpoint", "section_start": 1718000000.5}

- time: unix seconds of the last beat. iter: the iteration then. pid: the writer's pid.
- section: what the run is doing, one of SECTIONS: "startup" (imports, rendezvous, building the model, loading
  a checkpoint, the data index), "step" (training steps), "eval" (evaluation, the final sample), "checkpoint"
  (writing a checkpoint). The monitor gives each section its own timeout, so a long save is not taken for a
  hung step and a hang in start-up is still caught.
- section_start: unix seconds when the run entered this section.

A file written before sections existed ({"time", "iter", "pid"}) reads as section "step" that started at its
time. The file is not fsync'ed: it only has to be visible, not to survive a power loss.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from utils.fileio import atomic_write_text
from utils.run_layout import HEARTBEAT_NAME

STARTUP = "startup"
STEP = "step"
EVAL = "eval"
CHECKPOINT = "checkpoint"
SECTIONS = (STARTUP, STEP, EVAL, CHECKPOINT)


class Heartbeat:
    """`Heartbeat(path).beat(iter, section)` records that the run is alive at `iter`, doing `section`.

    min_interval_s throttles writes within a section (a beat sooner than that after the last written one is
    skipped), so it can be called every iteration at no cost. Entering another section always writes at once:
    the monitor must apply the new section's timeout from its first second.
    """

    def __init__(self, path: str | os.PathLike, min_interval_s: float = 0.0):
        self.path = Path(path)
        self.min_interval_s = float(min_interval_s)
        self._last = -float("inf")
        self._section: str | None = None
        self._section_start = 0.0

    def beat(self, iter: int, section: str = STEP, force: bool = False) -> bool:
        """Write the heartbeat; returns whether it was written (False when throttled)."""
        if section not in SECTIONS:
            raise ValueError(f"unknown heartbeat section {section!r}; use one of {', '.join(SECTIONS)}")
        now = time.time()
        changed = section != self._section
        if not (force or changed) and now - self._last < self.min_interval_s:
            return False
        if changed:
            self._section, self._section_start = section, now
        record = {"time": now, "iter": int(iter), "pid": os.getpid(), "section": section,
                  "section_start": self._section_start}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(record), durable=False)
        self._last = now
        return True

    @contextmanager
    def section(self, section: str, iter: int) -> Iterator[None]:
        """`with hb.section(CHECKPOINT, it): save()` beats `section` now and the previous section afterwards, so
        the time after the save is judged by the previous section's timeout again."""
        previous = self._section
        self.beat(iter, section)
        try:
            yield
        finally:
            if previous is not None:
                self.beat(iter, previous)


def read_heartbeat(path: str | os.PathLike) -> dict | None:
    """The last heartbeat written to `path` (with "section" and "section_start" filled in for an old file), or
    None if there is none (or it cannot be read)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("time"), (int, float)):
        return None
    if not isinstance(obj.get("section"), str):
        obj["section"] = STEP
    if not isinstance(obj.get("section_start"), (int, float)):
        obj["section_start"] = obj["time"]
    return obj
