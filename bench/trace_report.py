"""Where a profiled step's GPU time goes: a summary of a torch-profiler Chrome trace.

    python bench/trace_report.py TRACE.json[.gz] [--steps=2] [--top=40]

Prints one JSON line per row, in three groups:
1. "span": wall time from the first kernel's start to the last kernel's end, the busy time (the union of all
   kernel intervals, so overlapping streams count once) and the idle time between them, per step.
2. "category": device time per kind of kernel (GEMM, attention, Triton kernels by name, elementwise, copies,
   reductions, memsets), per step.
3. "site": the top (kernel, launching aten op, innermost project source line) triples by device time, per step,
   so a copy or an elementwise kernel can be traced back to the line that asked for it. Needs a trace recorded
   with `with_stack=True` (bench/mfu.py --profile --trace_dir=DIR does that).

The trace's launch linkage: a kernel event and the CUDA runtime call that launched it share a "correlation" id;
the runtime call lies inside the aten op (cpu_op) that issued it on the same thread, and with_stack adds
"python_function" events around those ops.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import gzip
import json
import os
import re

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
# torch names a frame by its path relative to the sys.path entry it was imported from
PROJECT_PREFIXES = ("model/", "parallel/", "optimizer/", "dataset/", "utils/", "bench/", "mfu.py", "train.py",
                    "ddp.py", "zero1.py")
_CATEGORY_RULES = (
    ("attention", re.compile(r"cudnn|fmha|flash|attention", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|sm90_xmma|cutlass|Kernel2|splitK", re.I)),
    ("memset", re.compile(r"memset", re.I)),
    ("copy", re.compile(r"memcpy|copy", re.I)),
    ("reduce", re.compile(r"reduce", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|foreach", re.I)),
)


def load_events(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def category(kernel_name: str) -> str:
    """A coarse kind for a kernel name; Triton kernels (our ops) keep their own names."""
    if kernel_name.startswith("_") or kernel_name.startswith("triton"):
        return "triton:" + kernel_name.split("_0d1d")[0][:48]
    for label, pattern in _CATEGORY_RULES:
        if pattern.search(kernel_name):
            return label
    return "other"


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _project_frame(name: str) -> str | None:
    """The name ('model/modeling.py(93): forward') of a python_function event in this project, else None."""
    return name if name.startswith(PROJECT_PREFIXES) else None


def launch_sites(events: list[dict]) -> dict[int, tuple[str, str]]:
    """correlation id -> (aten op name, innermost project frame) for every CUDA runtime or driver launch.

    1. Collect per thread the cpu_ops, the project python frames and the runtime calls, as (ts, end) spans.
    2. For each runtime call, the innermost enclosing cpu_op and project frame are the ones with the latest
       start among those whose span covers the call (a bisect over starts, then a short backward scan).
    """
    per_tid: dict = collections.defaultdict(lambda: {"op": [], "py": [], "rt": []})
    for e in events:
        if e.get("ph") != "X":
            continue
        cat, key = e.get("cat"), (e.get("pid"), e.get("tid"))
        if cat == "cpu_op":
            per_tid[key]["op"].append((e["ts"], e["ts"] + e.get("dur", 0), e["name"]))
        elif cat == "python_function":
            frame = _project_frame(e["name"])
            if frame:
                per_tid[key]["py"].append((e["ts"], e["ts"] + e.get("dur", 0), frame))
        elif cat in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            per_tid[key]["rt"].append((e["ts"], e["args"]["correlation"]))
    sites: dict[int, tuple[str, str]] = {}
    for spans in per_tid.values():
        ops, pys = sorted(spans["op"]), sorted(spans["py"])
        op_starts, py_starts = [s for s, _, _ in ops], [s for s, _, _ in pys]
        for ts, corr in spans["rt"]:
            sites[corr] = (_innermost(ops, op_starts, ts, "-"), _innermost(pys, py_starts, ts, "-"))
    return sites


def _innermost(spans, starts, ts, default: str, scan: int = 64) -> str:
    i = bisect.bisect_right(starts, ts) - 1
    for j in range(i, max(-1, i - scan), -1):
        s, e, name = spans[j]
        if s <= ts <= e:
            return name
    return default


def report(path: str, steps: int, top: int) -> list[dict]:
    events = load_events(path)
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") in GPU_CATS]
    if not kernels:
        raise ValueError(f"{path} holds no GPU kernel events: record it with ProfilerActivity.CUDA on a GPU")
    start = min(k["ts"] for k in kernels)
    end = max(k["ts"] + k.get("dur", 0) for k in kernels)
    busy = busy_time([(k["ts"], k["ts"] + k.get("dur", 0)) for k in kernels])
    rows = [{"row": "span", "step_ms": round((end - start) / 1e3 / steps, 3),
             "busy_ms": round(busy / 1e3 / steps, 3), "idle_ms": round((end - start - busy) / 1e3 / steps, 3),
             "kernels_per_step": len(kernels) // steps}]
    by_cat: collections.Counter = collections.Counter()
    n_cat: collections.Counter = collections.Counter()
    for k in kernels:
        c = category(k["name"])
        by_cat[c] += k.get("dur", 0)
        n_cat[c] += 1
    for c, us in by_cat.most_common():
        rows.append({"row": "category", "category": c, "ms": round(us / 1e3 / steps, 3), "launches": n_cat[c] // steps})
    sites = launch_sites(events)
    by_site: collections.Counter = collections.Counter()
    n_site: collections.Counter = collections.Counter()
    for k in kernels:
        op, frame = sites.get(k.get("args", {}).get("correlation"), ("-", "-"))
        key = (category(k["name"]), k["name"][:80], op, frame)
        by_site[key] += k.get("dur", 0)
        n_site[key] += 1
    for (cat, name, op, frame), us in by_site.most_common(top):
        rows.append({"row": "site", "category": cat, "ms": round(us / 1e3 / steps, 3),
                     "launches": n_site[(cat, name, op, frame)] // steps, "kernel": name, "op": op, "frame": frame})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", help="a Chrome trace from torch.profiler (.json or .json.gz)")
    ap.add_argument("--steps", type=int, default=2, help="training steps inside the trace (times are per step)")
    ap.add_argument("--top", type=int, default=40, help="how many launch sites to list")
    args = ap.parse_args(argv)
    if not os.path.exists(args.trace):
        raise SystemExit(f"no such trace file: {args.trace}")
    for row in report(args.trace, max(1, args.steps), args.top):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
