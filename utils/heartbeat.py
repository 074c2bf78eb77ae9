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

On a full disk (or any disk fault) the new record cannot be written; the run goes on (a checkpoint that cannot be
written stops it) and the beat touches the file's mtime instead, which needs no space: `read_heartbeat` adds
"alive", the later of the record's time and the mtime, which the monitor judges, so it does not take a run on a
full disk for a hung one. The fault is reported once (utils/disk_faults.BestEffort).
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from utils.disk_faults import BestEffort
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

    def __init__(self, path: str | os.PathLike, min_interval_s: float = 0.0, best_effort: BestEffort | None = None):
        self.path = Path(path)
        self.min_interval_s = float(min_interval_s)
        self.best_effort = best_effort if best_effort is not None else BestEffort()
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
        written = False
        with self.best_effort("the heartbeat", self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(record), durable=False)
            written = True
        if not written:
            self._touch(now)
        self._last = now
        return True

    def _touch(self, now: float) -> None:
        """The liveness a full disk leaves: the file's mtime (module docstring)."""
        try:
            os.utime(self.path, (now, now))
        except OSError:
            pass  # no file yet, or a read-only disk: the monitor's start-up timeout and the run's exit tell the rest

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
    """The last heartbeat written to `path` (with "section" and "section_start" filled in for an old file) and its
    "alive" time (module docstring), or None if there is none (or it cannot be read)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
        mtime = os.stat(path).st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("time"), (int, float)):
        return None
    obj["alive"] = max(obj["time"], mtime)  # a beat on a full disk touches the file (module docstring)
    if not isinstance(obj.get("section"), str):
        obj["section"] = STEP
    if not isinstance(obj.get("section_start"), (int, float)):
        obj["section_start"] = obj["time"]
    return obj
