"""How a train.py process ends: SIGTERM, exit codes and <out_dir>/exit_status.json (utils/exit_codes.py has the table).

1. `StopSignal` turns SIGTERM into a request the Trainer polls after each iteration: the ranks agree, save and
   stop with PREEMPTED. A second SIGTERM changes nothing (Slurm signals the workers and torchrun's agent both).
   Ctrl-C (SIGINT) once training runs is the same request, said in one line; a second Ctrl-C stops at once
   (KeyboardInterrupt: exit 130, one line, no traceback, nothing saved since the last checkpoint). Before
   training starts, Ctrl-C stops at once: there is nothing to save.
2. `outcome(exc)` maps how the run ended to (exit code, one-line reason, spike window): a RunStop carries its
   own; a user error (bad config, missing data, a full disk, a read-only dir) is USER_ERROR; anything else CRASH.
3. `record(...)` writes exit_status.json on rank 0 (monitor_process.py reads it: under torchrun the process exit
   code is always 1), and `report(...)` prints the one line a user error gets, once (rank 0), without traceback.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback

from tasks.guards import RunStop
from utils.cli import error_line, is_user_error
from utils.exit_codes import CRASH, INTERRUPTED, OK, USER_ERROR
from utils.run_status import write_exit_status


class StopSignal:
    """SIGTERM (and Ctrl-C once training runs) sets a flag instead of killing the process; installed by train.py's
    main, the entry point (see the module docstring)."""

    def __init__(self, rank: int = 0):
        self.received, self.rank = False, rank
        self.training = False  # set by arm(): from then on the first Ctrl-C saves instead of stopping at once
        self.trainer = None  # the run's Trainer once it exists: its iteration goes into exit_status.json
        self._previous = signal.signal(signal.SIGTERM, self._on_term)
        self._previous_int = signal.signal(signal.SIGINT, self._on_int)

    def _on_term(self, signum, frame) -> None:
        self.received = True

    def _on_int(self, signum, frame) -> None:
        if not self.training or self.received:
            raise KeyboardInterrupt
        self.received = True
        if self.rank == 0:
            print("\nCtrl-C: finishing this iteration, then saving a checkpoint and stopping (exit 5); "
                  "press Ctrl-C again to stop at once without saving", file=sys.stderr, flush=True)

    def arm(self, trainer) -> None:
        """Training starts: a Ctrl-C from now on finishes the iteration and saves (the Trainer polls `requested`)."""
        self.trainer, self.training = trainer, True

    @property
    def iteration(self) -> int:
        return self.trainer.iter if self.trainer is not None else 0

    def release_trainer(self) -> int:
        """Let the Trainer go (it holds the process group, which parallel.dist.destroy must free); its iteration."""
        iteration, self.trainer = self.iteration, None
        return iteration

    def requested(self) -> bool:
        return self.received

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
        signal.signal(signal.SIGINT, self._previous_int)


def outcome(exc: BaseException | None, iteration: int = 0) -> tuple[int, str, object]:
    """(exit code, reason, spike window or None) for a run that ended with `exc` (None: it finished)."""
    if exc is None:
        return OK, "the run finished", None
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED, (f"interrupted by Ctrl-C at iter {iteration}, without saving; --resume continues from "
                             f"the last checkpoint"), None
    if isinstance(exc, RunStop):
        return exc.code, exc.reason, exc.spike
    if is_user_error(exc):
        return USER_ERROR, error_line(exc), None
    return CRASH, f"{type(exc).__name__}: {exc}", None


def release_frames(exc: BaseException | None) -> None:
    """Drop the local variables of the frames in exc's traceback and in those of its causes and contexts.

    A traceback keeps every frame it passed through alive, and with them the run (the model, the DDP and its
    process group) until the exception dies; parallel.dist.destroy() must be able to free the group first.
    A printed traceback shows the same lines without them.
    """
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        todo += [e.__cause__, e.__context__]


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
