"""Training curves as a PNG: train loss and valid loss vs iteration, and the learning rate.

Uses matplotlib's object API with the Agg canvas directly, so it never touches pyplot's global backend
(no display needed, no import-time side effects).
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

from utils.fileio import atomic_write_bytes
from utils.logging import read_metrics


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        x, y = r.get("iter"), r.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def loss_curves(records: list[dict]) -> list[tuple[str, str, list[float], list[float]]]:
    """(label, line style, iters, values) of the loss panel: train loss, valid loss, then each valid/NAME."""
    per_source = sorted({k for r in records for k in r if k.startswith("valid/")})
    keys = [("loss", "train loss", "-"), ("valid_loss", "valid loss", "o-")]
    keys += [(k, f"valid {k[len('valid/'):]}", "o--") for k in per_source]
    return [(label, style, *_series(records, key)) for key, label, style in keys if _series(records, key)[0]]


def plot_metrics(metrics_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Plot a metrics.jsonl file to `out_png` (written atomically). Returns the png path.

    Train loss comes from records with "loss", valid loss from records with "valid_loss", a mix's per-source
    valid losses from records with "valid/NAME" (dashed, one per source), and the learning rate from records with
    "lr". Missing series are simply absent from the figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(1, 2)
    for label, style, xs, ys in loss_curves(records):
        ax_loss.plot(xs, ys, style, label=label, markersize=3)
    ax_loss.set_xlabel("iter")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend()
    xs, ys = _series(records, "lr")
    if xs:
        ax_lr.plot(xs, ys, color="tab:green")
    ax_lr.set_xlabel("iter")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("lr")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return out
