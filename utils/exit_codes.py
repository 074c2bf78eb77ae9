"""The exit codes of train.py, in one place: what each one means and what monitor_process.py does with it.

| code | name           | train.py exits with it when ...                             | the monitor then ...           |
|------|----------------|-------------------------------------------------------------|--------------------------------|
| 0    | OK             | the run finished                                            | stops, exit 0                  |
| 1    | CRASH          | anything unexpected (uncaught exception, failed collective) | resumes after a backoff        |
| 2    | USER_ERROR     | the config or the data is wrong (bad key, missing file)     | stops at once, exit 2          |
| 3    | NAN            | the loss stayed non-finite (last finite checkpoint kept)    | stops at once, exit 3          |
| 4    | SPIKE          | --spike_rollback saw a loss spike (see exit_status.json)    | rolls back, skips the window   |
| 5    | PREEMPTED      | SIGTERM or Ctrl-C: it finished the iteration, saved, exited | resumes at once                |
| 130  | INTERRUPTED    | a second Ctrl-C (or one before training): stopped unsaved   | stops at once                  |
| 126  | CANNOT_EXECUTE | (the shell) the command exists but cannot be executed       | stops at once, never --resume  |
| 127  | NOT_FOUND      | (the shell) the command does not exist                      | stops at once, never --resume  |

Why these values:

1. 0, 1 and 2 keep their meaning everywhere else: an uncaught Python exception exits 1, torchrun's agent exits 1
   when any worker fails, and argparse and utils/cli.run_main exit 2 on a mistake in the command. So a crash
   that never reaches our own exit path still reads as CRASH, and a CLI error as USER_ERROR.
2. 3, 4 and 5 are used by neither Python, torchrun, bash nor Slurm, and stay far below 126-165, where the shell
   reports "cannot execute", "not found" and 128+N ("killed by signal N": 137 is SIGKILL, 143 SIGTERM). A child
   killed by a signal therefore never looks like one of ours. 130 is the shell's code for Ctrl-C (128 + SIGINT),
   which train.py exits with when a user interrupts it at once: a person asked it to stop, so nothing retries. sysexits.h (64-78) is not used: the project's
   CLIs already answer 2 for user errors.
3. torchrun's agent turns every worker failure into 1, so under torchrun the real code travels in
   <out_dir>/exit_status.json (utils/run_status.py); the process exit code alone is enough without torchrun.

Codes that will only repeat (STOP_AT_ONCE) are never retried: a restart cannot fix the command or the data.
"""
from __future__ import annotations

import signal

OK = 0
CRASH = 1
USER_ERROR = 2
NAN = 3
SPIKE = 4
PREEMPTED = 5
INTERRUPTED = 128 + signal.SIGINT
CANNOT_EXECUTE = 126
NOT_FOUND = 127

# code -> (name, why the run stopped), for one-line log messages
_MEANING = {
    OK: ("OK", "the run finished"),
    CRASH: ("CRASH", "the run crashed"),
    USER_ERROR: ("USER_ERROR", "config or data error"),
    NAN: ("NAN", "the loss stayed non-finite"),
    SPIKE: ("SPIKE", "loss spike"),
    PREEMPTED: ("PREEMPTED", "preempted (SIGTERM or Ctrl-C) and saved"),
    INTERRUPTED: ("INTERRUPTED", "interrupted by Ctrl-C, not saved"),
    CANNOT_EXECUTE: ("CANNOT_EXECUTE", "the command cannot be executed"),
    NOT_FOUND: ("NOT_FOUND", "the command was not found"),
}

# A restart would fail the same way: the monitor stops at once on these.
STOP_AT_ONCE = frozenset({USER_ERROR, NAN, INTERRUPTED, CANNOT_EXECUTE, NOT_FOUND})


def describe(code: int) -> str:
    """One phrase for a log line, e.g. 'exit code 2 (USER_ERROR: config or data error)'; 128+N names signal N."""
    if code in _MEANING:
        name, why = _MEANING[code]
        return f"exit code {code} ({name}: {why})"
    if code > 128:
        try:
            return f"exit code {code} (killed by {signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exit code {code} (CRASH: the run crashed)"
