"""The FP8 loss comparison: two runs of configs/fp8_150m.py from the same seed, bf16 and --fp8=rowwise.

    python bench/fp8_loss_plot.py --bf16=RUN_A/metrics.jsonl --fp8=RUN_B/metrics.jsonl --out=bench/fp8_loss.png

Draws the training loss (thin) and the validation loss (markers) of both runs against the step, and prints one
JSON line: the final validation losses, FP8's relative gap at the end (the issue's bar: within 1%), the largest
relative gap of the validation curve over the run, and whether any FP8 loss was non-finite (divergence).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.logging import read_metrics  # noqa: E402


def curves(path: str) -> dict[str, list[tuple[int, float]]]:
    rows = read_metrics(path)
    return {"loss": [(r["iter"], r["loss"]) for r in rows if "loss" in r],
            "valid": [(r["iter"], r["valid_loss"]) for r in rows if "valid_loss" in r]}


def compare(bf16: dict, fp8: dict) -> dict:
    """Final valid losses, the relative gap (fp8 - bf16) / bf16 at the end and its largest absolute value over the
    eval points both runs have, and whether FP8 ever logged a non-finite loss."""
    a, b = dict(bf16["valid"]), dict(fp8["valid"])
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two runs share no evaluation step: run both with the same --eval_interval")
    gaps = [(b[s] - a[s]) / a[s] for s in common]
    return {"step": common[-1], "valid_bf16": a[common[-1]], "valid_fp8": b[common[-1]], "final_gap": gaps[-1],
            "max_abs_gap": max(abs(g) for g in gaps), "within_1pct": abs(gaps[-1]) <= 0.01,
            "fp8_nonfinite": any(not math.isfinite(v) for _, v in fp8["loss"] + fp8["valid"])}


def plot(bf16: dict, fp8: dict, out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, c, color in (("bf16", bf16, "tab:blue"), ("fp8 rowwise", fp8, "tab:red")):
        ax.plot(*zip(*c["loss"]), color=color, alpha=0.35, linewidth=1, label=f"{name} train")
        ax.plot(*zip(*c["valid"]), color=color, marker="o", markersize=3, linewidth=1.5, label=f"{name} valid")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bf16", required=True, help="metrics.jsonl of the bf16 run")
    ap.add_argument("--fp8", required=True, help="metrics.jsonl of the --fp8 run")
    ap.add_argument("--out", default="bench/fp8_loss.png")
    ap.add_argument("--title", default="configs/fp8_150m.py on the demo corpus: bf16 vs FP8")
    args = ap.parse_args(argv)
    bf16, fp8 = curves(args.bf16), curves(args.fp8)
    print(json.dumps(compare(bf16, fp8)), flush=True)
    plot(bf16, fp8, args.out, args.title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
