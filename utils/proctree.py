"""A process and every process below it, read from /proc: torchrun's agent starts its workers in sessions of
their own, so a signal to the agent's process group never reaches them, and a SIGKILLed agent leaves them
running. Killing a run means signalling the whole tree."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def _children() -> dict[int, list[int]]:
    """parent pid -> child pids, for every process visible in /proc."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command name may hold spaces: split after it
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int) -> list[int]:
    """Every live process below pid (children first found, depth-first), not pid itself."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux prctl PR_SET_CHILD_SUBREAPER), so workers
    whose parent died stay below it, where descendants() finds them; False where the call is unavailable."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def kill_descendants() -> list[int]:
    """SIGKILL every process below this one, then reap the ones that were orphans re-parented to it; returns the
    pids killed. Call it only once the direct child's exit status has been collected (by subprocess.wait)."""
    killed = descendants(os.getpid())
    for p in killed:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    return killed
