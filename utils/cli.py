"""The error contract of z2all's command-line tools: a user mistake is one line on stderr and exit status 2.

Use::

    from utils.cli import ArgumentParser, UserError, run_main

    def main(argv: list[str] | None = None):
        args = ArgumentParser(description="...").parse_args(argv)
        ...  # raise UserError (or ValueError, FileNotFoundError, ...) with a message that names the file and the fix

    if __name__ == "__main__":
        sys.exit(run_main(main))

API:

- ``run_main(main, argv=None) -> int``: calls ``main(argv)``. If it returns an int, that is the exit status;
  any other return value (entry points return their results, for tests) means 0. If it raises a user error
  (``is_user_error``), prints exactly one line, ``error: <message>``, to stderr and returns 2. Other
  exceptions (bugs, KeyboardInterrupt) propagate with their traceback, and ``SystemExit`` passes through
  (so ``--help`` exits 0 as usual). With ``Z2ALL_DEBUG`` set to anything but "" or "0", user errors
  propagate too, traceback included.
- ``is_user_error(exc) -> bool``: True for ``UserError``, ``ValueError`` (``json.JSONDecodeError`` and
  ``UnicodeDecodeError`` are ValueErrors), ``TypeError`` (config parsing), an ``OSError`` whose errno is in
  ``USER_ERRNOS`` (a path the user named is missing, has the wrong kind, is not writable or its disk is full),
  and a disk fault that a library wrapped in its own exception type (utils/disk_faults.fault_errno: safetensors,
  torch, numpy, tokenizers, pyarrow). Other OSErrors (EIO, ...) are failures of the machine, not of the command,
  and keep their traceback.
- ``error_line(exc) -> str``: the message ``run_main`` prints after ``error: ``: the exception's text on one
  line; for an OSError, the path, the reason and the fix; a ``DiskFault`` is already that line.
- ``UserError``: raise it for a mistake found by the tool's own checks. It is a ValueError, so library callers
  that catch ValueError keep working.
- ``ArgumentParser``: ``argparse.ArgumentParser`` whose parse errors (a missing or unknown flag, a bad value)
  raise ``UserError`` naming the flag (one line, exit 2 under ``run_main``) instead of printing the usage;
  ``--help`` prints the usage and exits 0 as usual.
- ``debug_enabled() -> bool``: whether ``Z2ALL_DEBUG`` asks for tracebacks. Besides train.py this module is
  the one place that reads the environment: it is the entry point of the other CLIs, never library code.

utils imports nothing of the project, so every layer's CLI can use this module.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable, NoReturn

from utils.disk_faults import FAULTS, DiskFault, fault_errno

DEBUG_ENV = "Z2ALL_DEBUG"
USER_ERROR_STATUS = 2

# errno -> the fix to print after the path and the reason
USER_ERRNOS = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path",
    errno.EISDIR: "pass a file, not a directory",
    errno.EEXIST: "remove it or choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.ENOSPC: "free space there or choose another output directory",
    errno.EDQUOT: "the disk quota is exhausted: free space or choose another output directory",
}


class UserError(ValueError):
    """A mistake in the command (arguments, input files): printed as one line by ``run_main``."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: a bad command line raises UserError instead of printing the usage.
    Under ``python -m pkg.mod`` the program is named ``python -m pkg.mod`` (argparse would say ``mod.py``)."""

    def __init__(self, *args, **kwargs):
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        built_by_main = sys._getframe(1).f_globals.get("__name__") == "__main__"  # not by a test calling main()
        if "prog" not in kwargs and not args and built_by_main and spec is not None:
            kwargs["prog"] = f"python -m {spec.name}"
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see --help)")


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, (ValueError, TypeError)):
        return True
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
        return True
    return isinstance(exc, Exception) and fault_errno(exc) is not None


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def error_line(exc: BaseException) -> str:
    if isinstance(exc, DiskFault):
        return exc.strerror
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        reason = exc.strerror or os.strerror(exc.errno)
        text = f"{where}: {reason}" if where else reason
        return f"{text}; {USER_ERRNOS[exc.errno]}"
    code = fault_errno(exc) if not isinstance(exc, (ValueError, TypeError)) else None
    if code is not None:  # a disk fault in a library's own exception type, from a writer that did not name itself
        return f"{FAULTS[code][0]} ({type(exc).__name__}: {_one_line(exc)}); {USER_ERRNOS[code]}"
    return _one_line(exc) or type(exc).__name__


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` under the contract in the module docstring; return the exit status."""
    try:
        result = main(argv)
    except Exception as e:
        if not is_user_error(e) or debug_enabled():
            raise
        print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
        return USER_ERROR_STATUS
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
