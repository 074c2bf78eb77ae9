"""progress_bar: shown on a terminal only, and visible on one that reports no size (it printed nothing there)."""
import io
import os
import pty
import subprocess
import sys

from tests.conftest import ROOT
from utils import progress

CHILD = "from utils.progress import progress_bar\nfor _ in progress_bar(range(3), desc='demo corpus', mininterval=0): pass\n"


def _run_on_a_new_pty() -> str:
    """The child's stderr is a fresh pty: isatty() is True and its size is 0 x 0, as under `script`."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env={**os.environ, "PYTHONPATH": ROOT, "COLUMNS": "", "LINES": ""})
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=60)
    os.close(master)
    return out.decode(errors="replace")


def test_a_terminal_without_a_size_still_gets_a_bar():
    text = _run_on_a_new_pty()
    assert "demo corpus: 100%" in text and "3/3" in text, repr(text)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_terminal_or_disabled_means_silent(monkeypatch):
    pipe = io.StringIO()  # isatty() is False
    monkeypatch.setattr(progress.sys, "stderr", pipe)
    assert sum(progress.progress_bar(range(4), desc="x")) == 6 and pipe.getvalue() == ""
    term = _Terminal()
    monkeypatch.setattr(progress.sys, "stderr", term)
    with progress.progress_bar(enabled=False, total=2, desc="y") as bar:
        bar.update(2)
    assert term.getvalue() == ""
