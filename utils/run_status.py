"""<out_dir>/exit_status.json: how a run ended, written by train.py (rank 0) and read by monitor_process.py.

Under torchrun the agent exits 1 whatever its workers' codes were, so the process exit code cannot tell a
config error from a crash. Rank 0 therefore records its real code (utils/exit_codes.py) in a small JSON file
just before it exits::

    {"code": 4, "reason": "loss 9.1 > 3.0 x median 2.2 for 20 steps", "iter": 1250, "time": 1718000000.5,
     "pid": 4242, "spike": {"start_iter": 1231, "end_iter": 1250, "consumed_start": 9848, "consumed_end": 10008}}

- code: the exit code (utils/exit_codes.py). reason: one line for the monitor's log. iter: the iteration the
  run stopped at. time: unix seconds when written. pid: the writer's pid.
- spike: present exactly when code is SPIKE. start_iter..end_iter (both included) are the iterations whose loss
  was above spike_factor x its running median; consumed_start and consumed_end are the trainer's absolute data
  position (consumed micro-batches of the global stream, the unit of --skip_data_to) before start_iter's batch
  and after end_iter's batch. The monitor resumes from the newest complete checkpoint before start_iter with
  --skip_data_to=consumed_end.

The file is replaced atomically and fsync'ed (on a shared file system, the close makes it visible to the
monitors of the other nodes). A reader passes `since` (the time its attempt started) so that the file of an
earlier attempt is never taken for this one's.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from utils.exit_codes import SPIKE
from utils.fileio import atomic_write_json
from utils.run_layout import EXIT_STATUS_NAME

_MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class SpikeWindow:
    """The iterations of a loss spike and the data they read (module docstring)."""
    start_iter: int
    end_iter: int
    consumed_start: int
    consumed_end: int

    def check(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"spike.{name} must be an int >= 0 (got {value!r})")
        if self.end_iter < self.start_iter or self.consumed_end < self.consumed_start:
            raise ValueError(f"the spike window ends before it starts: {asdict(self)}")


@dataclass(frozen=True)
class ExitStatus:
    """One exit_status.json (module docstring)."""
    code: int
    reason: str
    iter: int
    time: float
    pid: int
    spike: SpikeWindow | None = None

    def check(self) -> None:
        for name in ("code", "iter", "pid"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (got {value!r})")
        if self.code > 255:
            raise ValueError(f"code must be an exit code 0-255 (got {self.code})")
        if not isinstance(self.reason, str) or not isinstance(self.time, (int, float)):
            raise ValueError("reason must be a string and time a number")
        if (self.code == SPIKE) != (self.spike is not None):
            raise ValueError(f"a spike window goes with code {SPIKE} (SPIKE) and only with it (code {self.code})")
        if self.spike is not None:
            self.spike.check()


def exit_status_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / EXIT_STATUS_NAME


def write_exit_status(out_dir: str | os.PathLike, code: int, reason: str, iter: int,
                      spike: SpikeWindow | None = None) -> Path:
    """Record how this run ends; call it on rank 0 right before exiting with `code`. Returns the path.

    The reason is folded to one line. out_dir is created if missing: a config error found before the run
    directory exists must still reach the monitor, or under torchrun it would be retried as a crash. Raises
    ValueError on an inconsistent record (e.g. SPIKE without its window) and OSError if it cannot write; the
    exit path should log an OSError and still exit with `code`.
    """
    one_line = " ".join(reason.split())[:_MAX_REASON_CHARS]
    status = ExitStatus(code=code, reason=one_line, iter=iter, time=time.time(), pid=os.getpid(), spike=spike)
    status.check()
    path = exit_status_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = asdict(status)
    if spike is None:
        del record["spike"]
    atomic_write_json(path, record)
    return path


def read_exit_status(out_dir: str | os.PathLike, since: float | None = None) -> ExitStatus | None:
    """The exit status in out_dir, or None if there is none or it was written before `since` (unix seconds).

    Raises ValueError (naming the file) if the file is there and fresh but is not a valid record.
    """
    path = exit_status_path(out_dir)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a JSON object")
    if since is not None and isinstance(obj.get("time"), (int, float)) and obj["time"] < since:
        return None
    try:
        spike = _known_fields(SpikeWindow, obj["spike"]) if obj.get("spike") is not None else None
        status = _known_fields(ExitStatus, {**obj, "spike": spike})
        status.check()
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path} is not a valid exit status: {e}") from e
    return status


def _known_fields(cls, obj: dict):
    """cls(**obj) without the keys cls does not know: a newer writer may add fields."""
    if not isinstance(obj, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in obj.items() if k in names})
