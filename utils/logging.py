"""Rank-aware printing and the metrics log (metrics.jsonl + TensorBoard).

metrics.jsonl holds one JSON object per logged iteration, appended and flushed line by line, so a killed run
loses at most its last partial line. On resume the lines a killed run logged after its last checkpoint
(iter > resume_iter) are dropped first, so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from utils.fileio import atomic_write_text
from utils.run_layout import METRICS_NAME, TB_DIRNAME



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
    killed run are dropped.
    """

    def __init__(self, out_dir: str | os.PathLike | None, enabled: bool = True, tensorboard: bool = True,
                 resume_iter: int | None = None):
        self.enabled = bool(enabled) and out_dir is not None
        self._fh = None
        self._tb = None
        self.path = Path(out_dir) / METRICS_NAME if out_dir is not None else None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_iter is not None:
            truncate_metrics(self.path, resume_iter)
        needs_newline = self.path.is_file() and self.path.stat().st_size > 0 and \
            not self.path.read_bytes().endswith(b"\n")
        self._fh = open(self.path, "a", encoding="utf-8")
        if needs_newline:  # a torn last line must not swallow the next record
            self._fh.write("\n")
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
        purge_step = resume_iter + 1 if resume_iter is not None else None
        return SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step, flush_secs=30)

    def log(self, record: dict) -> None:
        """Append `record` (must hold an int "iter") as one JSON line; numeric fields also go to TensorBoard."""
        if not self.enabled:
            return
        if self._fh is None:
            raise ValueError("MetricsLogger.log called after close(); create a new MetricsLogger")
        rec = {str(k): _plain(v) for k, v in record.items()}
        step = rec.get("iter")
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"a metrics record needs an int 'iter' field (got {step!r} in {sorted(rec)})")
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in rec.items():
                if key != "iter" and _is_scalar(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
