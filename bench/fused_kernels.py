"""Fused-op microbenchmarks: z2all against torch eager, torch.compile and Liger at the seed shapes.

    python bench/fused_kernels.py [--ops=rmsnorm,add_rmsnorm,rope,swiglu,cross_entropy,attention] [--impls=...]
                            [--warmup=25] [--rep=100]
    python bench/fused_kernels.py --dry_run     # CPU, tiny shapes, torch paths: exercises the logic only

Seed shapes: tokens N = 16384 (micro-batch 8 x seq 2048), hidden 2048, 32 query / 8 key-value heads of 64,
intermediate 5632, vocab 64320; bf16 (fp32 residual for add+RMSNorm).
Impls per op: z2all (our op, impl="triton"), eager (the plain-PyTorch reference), compile
(torch.compile of the reference), liger (when liger_kernel is importable and has the op; otherwise a JSON line
with "skipped"). Attention adds the SDPA backends (cudnn, flash, efficient) and flash-attn when installed.

Steps: 1. measure the device-to-device copy bandwidth (read + write of a 1 GiB buffer) and look up the data
sheet's bandwidth (SPEC_GBPS); 2. for each case build inputs in the layout that impl gets in a real model, run
forward and forward+backward with triton.testing.do_bench (median ms) and one forward+backward under a reset
peak-memory counter; 3. time every case of the op again in turn, three rounds, the fastest reading kept and the
spread recorded: from CUDA graphs (triton.testing.do_bench_cudagraph) for the memory-bound ops on the GPU, by
wall clock for the others; 4. print one JSON line per case: op, impl, ms_fwd, ms_fwdbwd, GB/s (the minimal bytes
the op must move / time) and its fraction of the copy and of the spec bandwidth, TFLOP/s for the matmul ops,
peak memory (MiB above the inputs); then one line per op saying, against each impl, whether z2all is faster,
slower or on par (the difference inside the larger of the two spreads). Cross-entropy is timed forward+backward
only (Liger's fused cross-entropy, and ours with grad mode on, compute the gradients in the forward, so the
forward alone compares unequal work), with --ce_chunk_sizes for our op at other chunk sizes, and ends with a
line of each impl's peak memory relative to eager.

Two clocks: ms_fwd/ms_fwdbwd are wall time per call, Python and launch overhead included, which dominates ops
under ~0.1 ms (an autograd Function costs tens of microseconds of host time). ms_fwd_dev/ms_fwdbwd_dev replay the
calls from a CUDA graph, so they are the device time that the op costs inside a training step, where the host
runs ahead of the GPU. The *_dev rates (gbps_fwd_dev, frac_copy_fwd_dev, ...) use the device time. They are
taken for the memory-bound ops (RMSNorm, add+RMSNorm, RoPE, SwiGLU).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from model.config import Z2allConfig  # noqa: E402
from model.ops import (  # noqa: E402
    add_rms_norm,
    add_rms_norm_ref,
    apply_rope,
    apply_rope_ref,
    attention,
    attention_ref,
    flash_attn_available,
    fused_linear_cross_entropy,
    linear_cross_entropy_ref,
    rms_norm,
    rms_norm_ref,
    rope_cache,
    swiglu,
    swiglu_ref,
)

OPS = ("rmsnorm", "add_rmsnorm", "rope", "swiglu", "cross_entropy", "attention")
IMPLS = ("z2all", "eager", "compile", "liger")
# data-sheet HBM bandwidth, GB/s, by a substring of torch.cuda.get_device_name(): the ceiling beside the measured
# copy (a 1 GiB copy is not one: SwiGLU's forward read 102.5% of it on an H100)
SPEC_GBPS = (("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0),
             ("A100-SXM4-80GB", 2039.0), ("A100", 1555.0))
SEED_SHAPE = dict(batch=8, seq=2048, hidden=2048, n_heads=32, n_kv_heads=8, head_dim=64, inter=5632, vocab=64320)
DRY_SHAPE = dict(batch=2, seq=16, hidden=64, n_heads=4, n_kv_heads=2, head_dim=16, inter=96, vocab=256)


class Case:
    """One (op, impl): fn(*inputs) -> output(s); inputs() builds fresh leaves; bytes/flops for the rates."""

    def __init__(self, op, impl, fn, inputs, bytes_fwd, bytes_fwdbwd, flops_fwd=0.0, flops_fwdbwd=0.0, note=None,
                 fwd_comparable=True):
        self.op, self.impl, self.fn, self.inputs = op, impl, fn, inputs
        self.bytes_fwd, self.bytes_fwdbwd = bytes_fwd, bytes_fwdbwd
        self.flops_fwd, self.flops_fwdbwd = flops_fwd, flops_fwdbwd
        self.note = note
        # False where some impls do backward's work in the forward (fused cross-entropy: z2all with grad mode
        # on and Liger always compute the gradients in forward), so forward alone compares unequal work
        self.fwd_comparable = fwd_comparable


def _leaf(shape, dtype, device, scale=1.0):
    return (torch.randn(shape, device=device) * scale).to(dtype).requires_grad_(True)


def _liger_version() -> str | None:
    import importlib.metadata as md

    try:
        return md.version("liger-kernel")
    except md.PackageNotFoundError:
        return None


def _liger(name: str):
    """A function from liger_kernel.transformers.functional, or None (with the reason) when unavailable."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None, "liger_kernel not importable (pip install liger-kernel)"
    try:
        import liger_kernel.transformers.functional as lf
    except Exception as exc:  # a broken install: report it instead of failing the whole run
        return None, f"liger_kernel import failed: {exc!r}"
    fn = getattr(lf, name, None)
    return (fn, None) if fn is not None else (None, f"liger_kernel has no {name}")


def _variants(op, ours, ref, liger_name, liger_wrap, compile_ok):
    """(impl, fn, note) for our op, the eager reference, its torch.compile, and Liger."""
    out = [("z2all", ours, None), ("eager", ref, None)]
    out.append(("compile", torch.compile(ref) if compile_ok else None, None if compile_ok else "compile disabled"))
    if liger_name is None:
        out.append(("liger", None, f"liger has no {op} op"))
    else:
        fn, why = _liger(liger_name)
        out.append(("liger", liger_wrap(fn) if fn is not None else None, why))
    return out


def build_cases(op: str, s: dict, device, dtype, impl_flag: str, compile_ok: bool,
                ce_chunks: tuple[int, ...] = ()) -> list[Case]:
    """The cases of one op at shape s; impl_flag is our ops' impl ("triton" on GPU, "torch" on a dry run)."""
    n, d, e = s["batch"] * s["seq"], s["hidden"], torch.tensor([], dtype=dtype).element_size()
    cases = []
    if op == "rmsnorm":
        inputs = lambda: (_leaf((n, d), dtype, device), _leaf((d,), dtype, device))  # noqa: E731
        for impl, fn, note in _variants(
            op, lambda x, w: rms_norm(x, w, 1e-5, impl=impl_flag), lambda x, w: rms_norm_ref(x, w, 1e-5),
            "liger_rms_norm", lambda f: (lambda x, w: f(x, w, 1e-5)), compile_ok,
        ):
            cases.append(Case(op, impl, fn, inputs, 2 * n * d * e, 5 * n * d * e, note=note))
    elif op == "add_rmsnorm":
        inputs = lambda: (_leaf((n, d), dtype, device), _leaf((n, d), torch.float32, device),  # noqa: E731
                          _leaf((d,), dtype, device))
        for impl, fn, note in _variants(
            op, lambda x, r, w: add_rms_norm(x, r, w, 1e-5, impl=impl_flag),
            lambda x, r, w: add_rms_norm_ref(x, r, w, 1e-5), None, None, compile_ok,
        ):
            cases.append(Case(op, impl, fn, inputs, n * d * (2 * e + 8), n * d * (4 * e + 20), note=note))
    elif op == "rope":
        hq, hk, hd, t = s["n_heads"], s["n_kv_heads"], s["head_dim"], s["seq"]
        cos, sin = rope_cache(t, hd, 10000.0, device=device)
        inputs = lambda: (_leaf((s["batch"], t, hq, hd), dtype, device),  # noqa: E731
                          _leaf((s["batch"], t, hk, hd), dtype, device))
        full_cos, full_sin = torch.cat((cos, cos), -1)[None].to(dtype), torch.cat((sin, sin), -1)[None].to(dtype)

        def liger_wrap(f):  # Liger takes the Hugging Face layout: (B, H, T, D) and full (1, T, D) tables
            return lambda q, k: f(q.transpose(1, 2), k.transpose(1, 2), full_cos, full_sin)

        for impl, fn, note in _variants(
            op, lambda q, k: apply_rope(q, k, cos, sin, impl=impl_flag), lambda q, k: apply_rope_ref(q, k, cos, sin),
            "liger_rope", liger_wrap, compile_ok,
        ):
            moved = 2 * n * (hq + hk) * hd * e
            cases.append(Case(op, impl, fn, inputs, moved, 2 * moved, note=note))
    elif op == "swiglu":
        i = s["inter"]
        packed = lambda: (_leaf((n, 2 * i), dtype, device),)  # noqa: E731
        # each side gets the layout it has in a real model: z2all's one fused gate+up projection writes one
        # (N, 2I) tensor; Hugging Face's separate gate_proj and up_proj (what Liger patches) write two
        # contiguous (N, I) tensors (given two halves of one tensor, Liger would copy them first)
        split = lambda: (_leaf((n, i), dtype, device), _leaf((n, i), dtype, device))  # noqa: E731
        for impl, fn, note in _variants(
            op, lambda gu: swiglu(gu, impl=impl_flag), swiglu_ref,
            "liger_swiglu", lambda f: (lambda g, u: f(g, u)), compile_ok,
        ):
            inputs = split if impl == "liger" else packed
            cases.append(Case(op, impl, fn, inputs, 3 * n * i * e, 8 * n * i * e, note=note))
    elif op == "cross_entropy":
        cases += _ce_cases(s, n, d, device, dtype, impl_flag, compile_ok, ce_chunks)
    elif op == "attention":
        cases += _attention_cases(s, device, dtype, compile_ok)
    else:
        raise ValueError(f"unknown op {op!r}; choose from {OPS}")
    return cases


def _ce_cases(s, n, d, device, dtype, impl_flag, compile_ok, chunk_sizes=()) -> list[Case]:
    """Fused linear cross-entropy cases, forward+backward only; z2all_c{C} repeats ours at C tokens per chunk."""
    v = s["vocab"]
    targets = torch.randint(0, v, (n,), device=device)

    def inputs():
        return _leaf((n, d), dtype, device), _leaf((v, d), dtype, device, scale=0.02)

    def liger_wrap(f):
        return lambda h, w: f(h, w, targets)

    def ours(chunk):
        return lambda h, w: fused_linear_cross_entropy(h, w, targets, impl=impl_flag, chunk_size=chunk)

    flops = 2.0 * n * v * d
    variants = _variants("cross_entropy", ours(Z2allConfig.cross_entropy_chunk_size),
                         lambda h, w: linear_cross_entropy_ref(h, w, targets), "liger_fused_linear_cross_entropy",
                         liger_wrap, compile_ok)
    variants[1:1] = [(f"z2all_c{c}", ours(c), None) for c in chunk_sizes]
    return [Case("cross_entropy", impl, fn, inputs, 0, 0, flops, 3 * flops, note, fwd_comparable=False)
            for impl, fn, note in variants]


def _attention_cases(s, device, dtype, compile_ok) -> list[Case]:
    b, t, hq, hk, hd = s["batch"], s["seq"], s["n_heads"], s["n_kv_heads"], s["head_dim"]

    def inputs():
        return tuple(_leaf((b, t, h, hd), dtype, device) for h in (hq, hk, hk))

    flops = 2.0 * b * hq * t * t * hd  # causal: half of the 4·B·H·T²·D of full attention
    cases = [Case("attention", "z2all", lambda q, k, v: attention(q, k, v), inputs, 0, 0, flops, 3.5 * flops)]
    if device.type == "cuda":
        for backend in ("cudnn", "flash", "efficient"):
            fn = (lambda bk: (lambda q, k, v: attention(q, k, v, impl="sdpa", sdpa_backend=bk)))(backend)
            cases.append(Case("attention", f"sdpa_{backend}", fn, inputs, 0, 0, flops, 3.5 * flops))
        if flash_attn_available():
            fn = lambda q, k, v: attention(q, k, v, impl="flash_attn")  # noqa: E731
            cases.append(Case("attention", "flash_attn", fn, inputs, 0, 0, flops, 3.5 * flops))
    cases.append(Case("attention", "eager", attention_ref, inputs, 0, 0, flops, 3.5 * flops))
    comp = torch.compile(attention_ref) if compile_ok else None
    cases.append(Case("attention", "compile", comp, inputs, 0, 0, flops, 3.5 * flops,
                      None if compile_ok else "compile disabled"))
    cases.append(Case("attention", "liger", None, inputs, 0, 0, note="liger has no attention op"))
    return cases


def time_ms(fn, device, warmup: int, rep: int) -> float:
    """Median milliseconds of fn(): triton.testing.do_bench on CUDA, a perf_counter loop on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=warmup, rep=rep))
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[1]


def device_ms(fn) -> float:
    """Mean milliseconds of fn() replayed from a CUDA graph (no host overhead; no L2 flush between calls)."""
    from triton.testing import do_bench_cudagraph

    return float(do_bench_cudagraph(fn, rep=100))


def spec_gbps(device_name: str) -> float | None:
    """The data sheet's memory bandwidth of the GPU (GB/s), or None for a GPU not in SPEC_GBPS."""
    for key, gbps in SPEC_GBPS:
        if key in device_name:
            return gbps
    return None


def _rates(case: Case, ms_fwd: float | None, ms_fb: float, copy_gbps: float, suffix: str = "",
           spec: float | None = None) -> dict:
    """Bandwidth (and its fraction of the measured copy and of the spec) or TFLOP/s; fwd only when timed."""
    rec = {}
    for part, nbytes, flops, ms in (("fwd", case.bytes_fwd, case.flops_fwd, ms_fwd),
                                    ("fwdbwd", case.bytes_fwdbwd, case.flops_fwdbwd, ms_fb)):
        if ms is None:
            continue
        if nbytes:
            gbps = round(nbytes / (ms * 1e-3) / 1e9, 1)
            rec[f"gbps_{part}{suffix}"] = gbps
            rec[f"frac_copy_{part}{suffix}"] = round(gbps / copy_gbps, 3)
            if spec:
                rec[f"frac_spec_{part}{suffix}"] = round(gbps / spec, 3)
        if flops:
            rec[f"tflops_{part}{suffix}"] = round(flops / (ms * 1e-3) / 1e12, 1)
    return rec


def copy_bandwidth_gbps(device, warmup: int, rep: int, nbytes: int) -> float:
    """Device-to-device copy bandwidth: (read + write) bytes / time of dst.copy_(src)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup, rep)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def run_case(case: Case, device, warmup: int, rep: int, copy_gbps: float, wall_in_rounds: bool):
    """Measure one case's peak memory and, unless wall_in_rounds, its wall time forward and forward+backward.

    Returns (record, (fwd or None, fwdbwd)): main() times them afterwards in rounds over every case of the op
    (timed_rounds), from CUDA graphs for the memory-bound ops on CUDA (the wall time above stays beside that
    device time), by wall clock otherwise (wall_in_rounds: the rounds give ms_fwd/ms_fwdbwd, so no reading
    here).
    """
    inputs = case.inputs()
    outs = _as_tuple(case.fn(*inputs))
    grads = [torch.randn_like(o) if o.dim() else torch.ones_like(o) for o in outs]

    def fwd():
        with torch.no_grad():
            case.fn(*inputs)

    def fwdbwd():
        for x in inputs:
            x.grad = None
        torch.autograd.backward(_as_tuple(case.fn(*inputs)), grads)

    del outs
    rec = {"op": case.op, "impl": case.impl}
    if wall_in_rounds:
        fwdbwd()  # the peak below is then taken with the grads of a previous call allocated, as after timing
    else:
        ms_fb = time_ms(fwdbwd, device, warmup, rep)
        if case.fwd_comparable:
            rec["ms_fwd"] = round(time_ms(fwd, device, warmup, rep), 4)
        rec["ms_fwdbwd"] = round(ms_fb, 4)
        rec.update(_rates(case, rec.get("ms_fwd"), ms_fb, copy_gbps))
    rec["peak_mem_mib"] = round(_peak_mib(fwdbwd, device), 1)
    return rec, (fwd if case.fwd_comparable else None, fwdbwd)


def timed_rounds(pending: list, timer, suffix: str, copy_gbps: float, spec: float | None,
                 rounds: int = 3) -> None:
    """Time every (case, record, (fwd, fwdbwd)) of one op in turn, `rounds` times over, into its record.

    Each case keeps its fastest reading (ms_fwd{suffix}, ms_fwdbwd{suffix}) and the spread of its readings,
    (max - min) / min in percent (spread_fwd{suffix}, ...), which says when two cases are on par. Why rounds:
    timed one after the other only once, the same kernel read up to 5% apart depending on what ran before it
    (an H100 running at its 700 W power cap, 2026-11-23), which decided the ranking between equal kernels.
    fwd is None for a case whose forward alone is not comparable. timer(fn) -> ms: device_ms for CUDA-graph
    replay (suffix "_dev"), wall-clock do_bench otherwise (suffix "").
    """
    readings: dict[int, list] = {}
    for _ in range(rounds):
        for i, (case, rec, fns) in enumerate(pending):
            if "graph_error" in rec:
                continue
            try:
                times = [timer(f) if f is not None else None for f in fns]
            except Exception as exc:  # an op that syncs the host (Liger's cross-entropy) cannot be captured, and
                # a failed capture leaves the CUDA RNG state unusable for later cases: keep its wall-clock figures
                rec["graph_error"] = repr(exc)[:200]
                torch.cuda.synchronize()
                continue
            readings.setdefault(i, []).append(times)
    for i, rows in readings.items():
        case, rec, _ = pending[i]
        best = []
        for part, col in zip(("fwd", "fwdbwd"), zip(*rows)):
            if col[0] is None:
                best.append(None)
                continue
            best.append(min(col))
            rec[f"ms_{part}{suffix}"] = round(min(col), 4)
            rec[f"spread_{part}{suffix}"] = round(100 * (max(col) - min(col)) / min(col), 2)
        rec.update(_rates(case, best[0], best[1], copy_gbps, suffix, spec))


def verdicts(records: list[dict]) -> dict:
    """z2all against each other impl of one op: 'on par' where the difference is inside the larger spread.

    Compares the device time where it was taken (ms_*_dev), the wall time otherwise; ratio = theirs / ours,
    so above 1 means z2all is faster.
    """
    recs = {r["impl"]: r for r in records if "impl" in r and "ms_fwdbwd" in r}
    ours = recs.get("z2all")
    out = {}
    if ours is None:
        return out
    for impl, rec in recs.items():
        if impl == "z2all":
            continue
        for part in ("fwd", "fwdbwd"):
            key = f"ms_{part}_dev" if f"ms_{part}_dev" in ours and f"ms_{part}_dev" in rec else f"ms_{part}"
            if key not in ours or key not in rec:
                continue
            spread = max(ours.get(key.replace("ms_", "spread_"), 0.0), rec.get(key.replace("ms_", "spread_"), 0.0))
            ratio = rec[key] / ours[key]
            word = "on par" if abs(ratio - 1) * 100 <= spread else ("z2all faster" if ratio > 1 else "z2all slower")
            out[f"{impl}/{part}"] = f"{word} ({ratio:.3f}x, {key}, spread {spread:.1f}%)"
    return out


def _peak_mib(fn, device) -> float:
    """Peak memory of one fn() above what was allocated before it (CUDA); 0 on the CPU."""
    if device.type != "cuda":
        fn()
        return 0.0
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--impls", default=",".join(IMPLS) + ",sdpa_cudnn,sdpa_flash,sdpa_efficient,flash_attn")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetitions (ms)")
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="CPU, tiny shapes, torch impls")
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile cases")
    p.add_argument("--ce_chunk_sizes", type=lambda v: [int(c) for c in v.split(",") if c], default=[],
                   help="also time our fused cross-entropy at these tokens per chunk (cases z2all_c{C})")
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    bad = [o for o in ops if o not in OPS]
    if bad:
        p.error(f"unknown --ops {bad}; choose from {OPS}")
    wanted = set(args.impls.split(","))
    if not args.dry_run and not torch.cuda.is_available():
        print("bench/fused_kernels.py needs a CUDA GPU (or pass --dry_run to exercise it on the CPU)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    shape, dtype = (DRY_SHAPE, torch.float32) if args.dry_run else (SEED_SHAPE, torch.bfloat16)
    impl_flag = "torch" if args.dry_run else "triton"
    compile_ok = not (args.dry_run or args.no_compile)
    copy_gbps = copy_bandwidth_gbps(device, args.warmup, args.rep, 2**20 if args.dry_run else 2**30)
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    spec = spec_gbps(dev_name)
    print(json.dumps({"device": dev_name, "copy_gbps": round(copy_gbps, 1), "spec_gbps": spec, "shape": shape,
                      "dtype": str(dtype), "torch": torch.__version__, "liger": _liger_version()}))
    for op in ops:
        mems, records, pending, wall = {}, [], [], []
        for case in build_cases(op, shape, device, dtype, impl_flag, compile_ok, tuple(args.ce_chunk_sizes)):
            if case.impl not in wanted and not (case.impl.startswith("z2all_c") and "z2all" in wanted):
                continue  # z2all_c{C} (--ce_chunk_sizes) comes with z2all
            if case.fn is None:
                records.append({"op": op, "impl": case.impl, "skipped": case.note})
                continue
            try:
                by_graph = device.type == "cuda" and bool(case.bytes_fwd)
                rec, fns = run_case(case, device, args.warmup, args.rep, copy_gbps, wall_in_rounds=not by_graph)
                mems[case.impl] = rec["peak_mem_mib"]
                (pending if by_graph else wall).append((case, rec, fns))
            except Exception as exc:  # one failing peer (an old Liger signature, OOM) must not stop the rest
                rec = {"op": op, "impl": case.impl, "error": repr(exc)[:300]}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            records.append(rec)
        timed_rounds(pending, device_ms, "_dev", copy_gbps, spec)
        timed_rounds(wall, lambda fn: time_ms(fn, device, args.warmup, args.rep), "", copy_gbps, spec)
        for rec in records:
            print(json.dumps(rec), flush=True)
        print(json.dumps({"op": op, "summary": "z2all against each impl", "verdicts": verdicts(records)}),
              flush=True)
        if op == "cross_entropy" and mems.get("eager"):
            ratios = {k: round(v / mems["eager"], 3) for k, v in mems.items()}
            print(json.dumps({"op": op, "summary": "peak memory relative to eager (target z2all <= 0.25)",
                              "mem_vs_eager": ratios}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
