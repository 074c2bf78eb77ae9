"""Disk faults, the one place that recognises them: a full disk, an exhausted quota, a read-only file system or a
missing permission, whatever library raised it.

Each library reports the same fault its own way (each form below was seen by causing the fault on a real
size-limited tmpfs, not guessed):

- open()/write, shutil, json: OSError(errno=28).
- safetensors (Rust): SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)").
- tokenizers (Rust): Exception("No space left on device (os error 28)").
- torch.save(obj, file handle): RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs
  598") whose __context__ is the OSError(28). torch.save(obj, path) raises RuntimeError("... basic_ios::clear:
  iostream error") with no errno anywhere, so the code here always hands torch.save a file handle.
- numpy save/tofile: OSError(errno=None, "Not enough free space to write N bytes after offset M"), or, when not one
  byte was free, OSError(errno=None, "N requested and 0 written"). A numpy memmap gets SIGBUS when it touches a
  page the disk cannot hold: nothing here writes through a memmap.
- pyarrow: OSError(errno=28, "Error writing bytes to file. Detail: [errno 28] No space left on device").
- TensorBoard: OSError(28) in its writer thread, raised again in the caller by the next add_scalar or close.
A read-only file system and a denied permission read the same way with errno 30 and 13 ("(os error 30)", ...).

- ``fault_errno(exc)``: the errno of such a fault behind `exc` (its __cause__/__context__ chain included), or None.
- ``DiskFault``: the OSError a writer raises instead: one line that names what was being written, where, and the
  fix. utils/cli prints it as is (exit 2); train.py exits 2 and the monitor does not restart into the same disk.
- ``writing(what, where)``: a context manager that turns any disk fault raised inside into a DiskFault.
- ``BestEffort``: for the outputs that must not stop a run (metrics, TensorBoard, the plot, the heartbeat): a
  disk fault is reported once per output and the run goes on; the next checkpoint then stops it, if the disk is
  still full.
"""
from __future__ import annotations

import errno
import re
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

# errno -> (what a user reads, the action that fixes it)
FAULTS = {
    errno.ENOSPC: ("no space left on device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota there"),
    errno.EROFS: ("read-only file system", "make it writable"),
    errno.EACCES: ("permission denied", "fix its permissions"),
    errno.EPERM: ("operation not permitted", "fix its permissions"),
}
# The forms a library puts the errno in its message: Rust's io::Error ("(os error 28)", safetensors and tokenizers)
# and Arrow's ("[errno 28]"), and the C strerror text of the faults that cannot be anything but the disk's.
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[errno (\d+)\]", re.IGNORECASE)
# numpy's short write to a file (tofile, save): it drops the errno; on a local file the disk or quota filled up
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")
_TEXTS = {
    "no space left on device": errno.ENOSPC,
    "not enough free space to write": errno.ENOSPC,  # numpy's fallocate check before save/tofile
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def fault_errno(exc: BaseException) -> int | None:
    """The errno (a key of FAULTS) of the disk fault behind `exc`, or None when it is something else."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in FAULTS:
            return e.errno
        text = str(e)
        for match in _ERRNO_IN_TEXT.finditer(text):
            code = int(match.group(1) or match.group(2))
            if code in FAULTS:
                return code
        lowered = text.lower()
        for needle, code in _TEXTS.items():
            if needle in lowered:
                return code
        if isinstance(e, OSError) and e.errno is None and _SHORT_WRITE.match(text):
            return errno.ENOSPC
    return None


class DiskFault(OSError):
    """A write stopped by a disk fault: `strerror` is the whole line (what, where, the fix); `errno` is the fault's.

    fix may hold "{action}", replaced by the fault's own action ("free space there", "make it writable", ...).
    """

    def __init__(self, code: int, what: str, where, fix: str = "{action} or choose another directory",
                 detail: str = ""):
        reason, action = FAULTS[code]
        super().__init__(code, f"{reason} while writing {what} to {where}{detail}: {fix.format(action=action)}")


@contextmanager
def writing(what: str, where, fix: str = "{action} or choose another directory",
            cleanup: Callable[[], None] | None = None, outer: bool = False) -> Iterator[None]:
    """Run the body; on any failure call `cleanup` (remove this write's temp files), and turn a disk fault into a
    DiskFault that names `what` and `where`. A DiskFault raised inside (a more precise one) passes unchanged, unless
    `outer`: then this one names the write (e.g. an import, whose checkpoint is saved into a temp dir)."""
    try:
        yield
    except BaseException as e:
        if cleanup is not None:
            cleanup()
        code = fault_errno(e)
        if code is None or (isinstance(e, DiskFault) and not outer):
            raise
        raise DiskFault(code, what, where, fix) from e


def warn_line(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class BestEffort:
    """Writes that must not stop a run. `with best_effort("metrics", path): write()` swallows a disk fault, says so
    once per name (`warn`), and says once more when that output is written again."""

    def __init__(self, warn: Callable[[str], None] = warn_line):
        self.warn = warn
        self.failing: set[str] = set()

    @contextmanager
    def __call__(self, what: str, where) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            if not self.swallow(what, where, e):
                raise
            return
        if what in self.failing:
            self.failing.discard(what)
            self.warn(f"{what} is written again to {where}")

    def swallow(self, what: str, where, exc: Exception) -> bool:
        """Whether `exc` is a disk fault (then reported, once per `what`); anything else is the caller's to raise."""
        code = fault_errno(exc)
        if code is None:
            return False
        if what not in self.failing:
            self.failing.add(what)
            self.warn(f"{FAULTS[code][0]} while writing {what} to {where}: the run goes on without it; "
                      f"{FAULTS[code][1]} (a checkpoint that cannot be written stops the run with exit 2)")
        return True
