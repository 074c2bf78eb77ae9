"""Run a CLI module as `python -m MODULE ARGS` would, in a child forked from the test process.

The child is a real process (its own exit status, its own stdout and stderr, nothing it does reaches the test
process), and it runs the module's `__main__` code the way `python -m` does (runpy, run_name="__main__", argv set,
an uncaught exception printed with its traceback and exit status 1, SystemExit honoured). What it skips is the
interpreter's start and the import of torch and the project, which the test process has done already: about 3 s
of every CLI test on a 2-core machine, for checks whose claim is what the CLI prints and returns.
"""
from __future__ import annotations

import io
import os
import runpy
import subprocess
import sys
import tempfile
import time
import traceback


def _child(module: str, args: list[str], env: dict[str, str], cwd: str, out_fd: int, err_fd: int) -> None:
    """In the forked child: never returns (os._exit), so nothing of the test process runs after the module."""
    code = 1
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.argv = [module, *args]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:  # as the interpreter does: None is 0, an int is itself, anything else is printed
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - the interpreter's own behaviour for an uncaught exception
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - the status must still go out
                pass
        os._exit(code)


def run_module_forked(module: str, args: list[str], env: dict[str, str], cwd: str,
                      timeout: float = 120.0) -> subprocess.CompletedProcess:
    """`python -m module *args` in a forked child: a CompletedProcess with its status, stdout and stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(module, args, env, cwd, out.fileno(), err.fileno())
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired([module, *args], timeout)
            time.sleep(0.01)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code,
                                           out.read().decode(errors="replace"), err.read().decode(errors="replace"))
