"""How a train.py process ends: SIGTERM, exit codes and <out_dir>/exit_status.json (utils/exit_codes.py has the table).

1. `StopSignal` turns SIGTERM into a request the Trainer polls after each iteration: the ranks agree, save and
   stop with PREEMPTED. A second SIGTERM changes nothing (Slurm signals the workers and torchrun's agent both).
2. `outcome(exc)` maps how the run ended to (exit code, one-line reason, spike window): a RunStop carries its
   own; a user error (bad config, missing data, a full disk, a read-only dir) is USER_ERROR; anything else CRASH.
3. `record(...)` writes exit_status.json on rank 0 (monitor_process.py reads it: under torchrun the process exit
   code is always 1), and `report(...)` prints the one line a user error gets, once (rank 0), without traceback.
"""
from __future__ import annotations

import os
import signal
import sys

from tasks.guards import RunStop
from utils.cli import error_line, is_user_error
from utils.exit_codes import CRASH, OK, USER_ERROR
from utils.run_status import write_exit_status


class StopSignal:
    """SIGTERM sets a flag instead of killing the process (installed by train.py's main, the entry point)."""

    def __init__(self):
        self.received = False
        self._previous = signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame) -> None:
        self.received = True

    def requested(self) -> bool:
        return self.received

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def outcome(exc: BaseException | None) -> tuple[int, str, object]:
    """(exit code, reason, spike window or None) for a run that ended with `exc` (None: it finished)."""
    if exc is None:
        return OK, "the run finished", None
    if isinstance(exc, RunStop):
        return exc.code, exc.reason, exc.spike
    if is_user_error(exc):
        return USER_ERROR, error_line(exc), None
    return CRASH, f"{type(exc).__name__}: {exc}", None


def argv_out_dir(argv: list[str]) -> str:
    """--out_dir from the command line, for a run whose config did not even parse."""
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--out_dir=")), "")


def record(out_dir: str, rank: int, code: int, reason: str, iteration: int, spike=None,
           under_torchrun: bool = False) -> None:
    """exit_status.json from rank 0; a failure to write it is printed, never raised (the exit code still goes out).

    A user error is recorded only under torchrun, whose agent turns every code into 1: without torchrun the
    process exit code tells the monitor, and a mistyped command leaves no trace in the dir it names.
    """
    if rank != 0 or not out_dir or (code == USER_ERROR and not under_torchrun):
        return
    probe = out_dir if os.path.isdir(out_dir) else os.path.dirname(os.path.abspath(out_dir))
    if code == USER_ERROR and not os.access(probe, os.W_OK):
        return  # e.g. the read-only out_dir that is the error itself: its one line says it all
    try:
        write_exit_status(out_dir, code, reason, iteration, spike)
    except (OSError, ValueError) as e:
        print(f"warning: could not write the exit status to {out_dir}: {e}", file=sys.stderr, flush=True)


def report(code: int, reason: str, rank: int) -> None:
    """The one line of a stop that is not a crash (a crash keeps its traceback), printed by rank 0 only."""
    if rank == 0 and code not in (OK, CRASH):
        print(f"{'error' if code == USER_ERROR else 'stopped'}: {reason}", file=sys.stderr, flush=True)
