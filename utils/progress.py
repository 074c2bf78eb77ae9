"""progress_bar: the one way the project shows progress on long work (tqdm), on a terminal only.

tqdm sizes its bar from the terminal; a terminal that reports 0 columns and 0 rows (a pty opened without a size:
`script`, some IDE consoles, containers attached without a tty size) makes it print nothing (it hides every bar
past the terminal's last row), and a build of a minute looks frozen. Such a terminal gets a fixed size instead.
"""
from __future__ import annotations

import shutil
import sys

FALLBACK_COLUMNS, FALLBACK_ROWS = 100, 24


def progress_bar(iterable=None, enabled: bool = True, **kwargs):
    """A tqdm bar on stderr when `enabled` and stderr is a terminal (else a silent pass-through); kwargs go to
    tqdm (desc, total, unit, ...)."""
    from tqdm import tqdm

    shown = enabled and sys.stderr.isatty()
    if shown:
        size = shutil.get_terminal_size((0, 0))
        if size.columns <= 0:
            kwargs.setdefault("ncols", FALLBACK_COLUMNS)
        if size.lines <= 0:
            kwargs.setdefault("nrows", FALLBACK_ROWS)
    kwargs.setdefault("mininterval", 1.0)
    return tqdm(iterable, disable=not shown, file=sys.stderr, **kwargs)
