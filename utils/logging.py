"""Rank-aware printing and the metrics log (metrics.jsonl + TensorBoard).

metrics.jsonl holds one JSON object per logged iteration, appended line by line with one write each, so a killed
run loses at most its last partial line. On resume the lines a killed run logged after its last checkpoint
(iter > resume_iter) are dropped first, so the file reads as one uninterrupted run.

Both are best-effort once the run trains (utils/disk_faults.BestEffort): a disk fault is reported once and the run
goes on. A line that did not fit is cut off again (the file keeps whole lines) and kept in memory (the last
MAX_PENDING records) until a later write succeeds, so a disk that was full for a while leaves no gap; TensorBoard
is closed for the rest of the run. Opening the log (the resume truncation) is a run-state write: a disk fault there
is a DiskFault.
"""
from __future__ import annotations

import collections
import json
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any

from utils.disk_faults import BestEffort, fault_errno, writing
from utils.fileio import atomic_write_text
from utils.run_layout import METRICS_NAME, TB_DIRNAME

MAX_PENDING = 10_000  # records kept in memory while metrics.jsonl cannot be written (a few MB)

def print0(*args: Any, rank: int, **kwargs: Any) -> None:
    """print() on rank 0 only, flushed (so logs interleave sanely under torchrun and pipes)."""
    if rank == 0:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def _parse_lines(text: str, path: Path) -> list[dict]:
    """JSON objects of `text`, one per line; an unparseable line (a torn last write) is skipped."""
    records, bad = [], []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad.append(i + 1)
            continue
        if isinstance(obj, dict):
            records.append(obj)
        else:
            bad.append(i + 1)
    if bad and bad != [len(lines)]:
        warnings.warn(f"{path}: skipped {len(bad)} unparseable line(s) {bad[:5]}", RuntimeWarning)
    return records


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Every record of a metrics.jsonl file ([] if it does not exist)."""
    p = Path(path)
    if not p.is_file():
        return []
    return _parse_lines(p.read_text(encoding="utf-8"), p)


def truncate_metrics(path: str | os.PathLike, resume_iter: int) -> int:
    """Rewrite `path` atomically without records whose iter > resume_iter (and torn lines). Returns #dropped."""
    p = Path(path)
    if not p.is_file():
        return 0
    text = p.read_text(encoding="utf-8")
    records = _parse_lines(text, p)
    kept = [r for r in records if not (isinstance(r.get("iter"), (int, float)) and r["iter"] > resume_iter)]
    n_lines = sum(1 for line in text.splitlines() if line.strip())
    if len(kept) != n_lines:
        atomic_write_text(p, "".join(json.dumps(r) + "\n" for r in kept))
    return n_lines - len(kept)


def _plain(value: Any) -> Any:
    """Tensors and NumPy scalars → Python numbers, so records stay JSON-serializable."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (ValueError, RuntimeError):
            pass
    return value


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class MetricsLogger:
    """Appends records to `<out_dir>/metrics.jsonl` and, if importable, to TensorBoard under `<out_dir>/tb`.

    Construct it with enabled=False (e.g. on ranks other than 0) or out_dir=None to make every call a no-op.
    resume_iter: the iteration of the checkpoint being resumed; later records (and TensorBoard events) of the
    killed run are dropped. best_effort reports the disk faults of both outputs (module docstring).
    """

    def __init__(self, out_dir: str | os.PathLike | None, enabled: bool = True, tensorboard: bool = True,
                 resume_iter: int | None = None, best_effort: BestEffort | None = None):
        self.enabled = bool(enabled) and out_dir is not None
        self._fd: int | None = None
        self._tb = None
        self._pending: collections.deque[str] = collections.deque(maxlen=MAX_PENDING)
        self.best_effort = best_effort if best_effort is not None else BestEffort()
        self.path = Path(out_dir) / METRICS_NAME if out_dir is not None else None
        if not self.enabled:
            return
        with writing("the metrics log", self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resume_iter is not None:
                truncate_metrics(self.path, resume_iter)
            needs_newline = self.path.is_file() and self.path.stat().st_size > 0 and \
                not self.path.read_bytes().endswith(b"\n")
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            self._size = os.fstat(self._fd).st_size
            if needs_newline:  # a torn last line must not swallow the next record
                self._append("\n")
            if tensorboard:
                self._tb = self._open_tensorboard(self.path.parent / TB_DIRNAME, resume_iter)

    @staticmethod
    def _open_tensorboard(tb_dir: Path, resume_iter: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            warnings.warn(f"TensorBoard logging disabled ({e}); pip install tensorboard to enable it",
                          RuntimeWarning)
            return None
        _quiet_tensorboard_thread_faults()
        purge_step = resume_iter + 1 if resume_iter is not None else None
        return SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step, flush_secs=30)

    def log(self, record: dict) -> None:
        """Append `record` (must hold an int "iter") as one JSON line; numeric fields also go to TensorBoard."""
        if not self.enabled:
            return
        if self._fd is None:
            raise ValueError("MetricsLogger.log called after close(); create a new MetricsLogger")
        rec = {str(k): _plain(v) for k, v in record.items()}
        step = rec.get("iter")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"a metrics record needs an int 'iter' field (got {step!r} in {sorted(rec)})")
        self._pending.append(json.dumps(rec) + "\n")
        with self.best_effort("metrics", self.path):
            self._append("".join(self._pending))
            self._pending.clear()
        if self._tb is not None:
            scalars = [(k, v) for k, v in rec.items() if k != "iter" and _is_scalar(v)]
            self._tensorboard(lambda: [self._tb.add_scalar(k, v, step) for k, v in scalars])

    def _append(self, text: str) -> None:
        """One append of whole lines; on a failure the file is cut back to its last whole line, then it raises."""
        data = text.encode("utf-8")
        try:
            done = 0
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass  # e.g. a read-only remount: the reader skips a torn last line anyway
            raise
        self._size += len(data)

    def _tensorboard(self, call) -> None:
        """A TensorBoard call; a disk fault closes TensorBoard for the rest of the run (module docstring)."""
        try:
            call()
        except Exception as e:
            if not self.best_effort.swallow("TensorBoard events", self.path.parent / TB_DIRNAME, e):
                raise
            tb_writer, self._tb = self._tb, None
            try:
                tb_writer.close()
            except Exception:  # closing flushes into the same full disk
                pass

    def close(self) -> None:
        if self._fd is not None:
            if self._pending:
                with self.best_effort("metrics", self.path):
                    self._append("".join(self._pending))
                    self._pending.clear()
            os.close(self._fd)
            self._fd = None
        if self._tb is not None:
            self._tensorboard(self._tb.close)
            self._tb = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_quiet_installed = False


def _quiet_tensorboard_thread_faults() -> None:
    """TensorBoard writes its events in a thread that dies with a traceback on stderr at a disk fault, before the
    next add_scalar raises it again in the caller, where MetricsLogger reports it once. That thread's traceback is
    dropped (only for a disk fault in TensorBoard's own writer thread); every other thread error is printed."""
    global _quiet_installed
    if _quiet_installed:
        return
    previous = threading.excepthook

    def hook(args):
        thread_cls = type(args.thread)
        if not (thread_cls.__module__.startswith("tensorboard.") and isinstance(args.exc_value, Exception)
                and fault_errno(args.exc_value) is not None):
            previous(args)

    threading.excepthook = hook
    _quiet_installed = True
