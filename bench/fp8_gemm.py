"""FP8 against bf16 for the decoder's linear layers at the seed shapes: each GEMM of a step, with and without casts.

    python bench/fp8_gemm.py [--gemms=qkv,o,gate_up,down] [--tokens=16384] [--warmup=25] [--rep=100] [--rounds=3]
    python bench/fp8_gemm.py --dry_run      # CPU, tiny shapes, the reference paths: exercises the logic only

What --fp8=rowwise runs (model/ops/fp8_linear.py) is read off these cases; each GEMM (K x N, M = --tokens rows)
gets, in milliseconds (triton.testing.do_bench's median, the fastest of --rounds interleaved rounds, with the
spread) and TFLOP/s:
- fwd:   bf16 x @ W^T | fp8 (inputs already quantized, as the fused norm and SwiGLU deliver them; fast accumulation,
         the recipe's) | fp8_precise (full fp32 accumulation) | fp8_cast (plus quantizing a bf16 input: what o pays);
- dgrad: bf16 dy @ W | fp8 (precise accumulation, the recipe's) | fp8_fast | fp8_cast (plus quantizing dy: what the
         recipe runs; the cast is not fused into the kernels that write dy);
- wgrad: bf16 (the sink's GEMM into the fp32 main grad, parallel/ddp.py addmm_into) | bf16_dequant (plus
         dequantizing the FP8-saved input: what the recipe runs for qkv, gate_up and down without selective
         recompute) | fp8_rowwise (_scaled_mm over the tokens, scales per column of dy and x, then added into the
         main grad) and fp8_rowwise_cast (plus the transposing casts): the FP8 weight gradient the recipe leaves
         out;
- fwdbwd: the whole layer, forward and backward into an fp32 main grad: bf16 (ops.linear + sink) | fp8 (fp8_linear
         on an FP8 input) | fp8_tensor (fp8_linear on a bf16 input, quantized inside);
- the producers' fused casts: add+RMSNorm (K = hidden) and SwiGLU (gate_up's output) forward writing bf16 against
  writing the FP8 copy (norm_bf16 | norm_fp8, swiglu_bf16 | swiglu_fp8);
- weight_quant: both FP8 copies of the weight, once per optimizer step.
Then one line per GEMM: fp8 over bf16 for fwd, dgrad, wgrad and fwdbwd (the recipe's variants), and one summary
over all GEMMs weighted as a layer runs them. The first line records the device, date and versions.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.fused_kernels import time_ms  # noqa: E402
from model.ops import add_rms_norm, linear, swiglu  # noqa: E402
from model.ops.fp8 import FP8_DTYPE, Fp8Input, dequantize_rows, fp8_mm, fp8_unsupported, quantize_rows  # noqa: E402
from model.ops.fp8_linear import fp8_linear, quantize_weight  # noqa: E402
from parallel.ddp import addmm_into  # noqa: E402

# (K, N) of each projection at the seed 1.25B shape (hidden 2048, 32/8 heads of 64, SwiGLU 5632)
SEED_GEMMS = {"qkv": (2048, 3072), "o": (2048, 2048), "gate_up": (2048, 11264), "down": (5632, 2048)}
DRY_GEMMS = {"qkv": (32, 64), "o": (32, 32), "gate_up": (32, 96), "down": (48, 32)}
SEED_TOKENS, DRY_TOKENS = 16384, 48


class Sink:
    """The DDP's weight-grad sink reduced to its GEMM: main += dy^T @ x into one fp32 buffer."""

    def __init__(self, weight: torch.Tensor):
        self.weight, self.main = weight, torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)

    def accumulate_wgrad(self, weight, grad_out, inp) -> bool:
        addmm_into(self.main, grad_out, inp)
        return True


def _gemm_cases(m: int, k: int, n: int, device, impl: str) -> dict:
    """name -> zero-argument function, for one GEMM shape (the inputs are built once, here)."""
    dtype = torch.bfloat16
    x = torch.randn(m, k, device=device).to(dtype)
    dy = torch.randn(m, n, device=device).to(dtype)
    w = (torch.randn(n, k, device=device) * 0.02).to(dtype)
    main = torch.zeros(n, k, dtype=torch.float32, device=device)
    w8 = quantize_weight(w, impl)
    xq, xs = quantize_rows(x, impl)
    dyq, dys = quantize_rows(dy, impl)
    dyt_q, dyt_s = quantize_rows(dy.t().contiguous(), impl)  # dy^T (N, M): rows along the tokens
    xt_q, xt_s = quantize_rows(x.t().contiguous(), impl)  # x^T (K, M)

    def wgrad_fp8(cast: bool):
        a, sa, b, sb = (*quantize_rows(dy.t().contiguous(), impl), *quantize_rows(x.t().contiguous(), impl)) \
            if cast else (dyt_q, dyt_s, xt_q, xt_s)
        main.add_(fp8_mm(a, sa, b, sb, dtype, fast_accum=False))

    return {
        "fwd_bf16": lambda: F.linear(x, w),
        "fwd_fp8": lambda: fp8_mm(xq, xs, w8.data, w8.scale, dtype, fast_accum=True),
        "fwd_fp8_precise": lambda: fp8_mm(xq, xs, w8.data, w8.scale, dtype, fast_accum=False),
        "fwd_fp8_cast": lambda: fp8_mm(*quantize_rows(x, impl), w8.data, w8.scale, dtype, fast_accum=True),
        "dgrad_bf16": lambda: dy @ w,
        "dgrad_fp8": lambda: fp8_mm(dyq, dys, w8.data_t, w8.scale_t, dtype, fast_accum=False),
        "dgrad_fp8_fast": lambda: fp8_mm(dyq, dys, w8.data_t, w8.scale_t, dtype, fast_accum=True),
        "dgrad_fp8_cast": lambda: fp8_mm(*quantize_rows(dy, impl), w8.data_t, w8.scale_t, dtype, fast_accum=False),
        "wgrad_bf16": lambda: addmm_into(main, dy, x),
        "wgrad_bf16_dequant": lambda: addmm_into(main, dy, dequantize_rows(xq, xs, dtype, impl)),
        "wgrad_fp8_rowwise": lambda: wgrad_fp8(cast=False),
        "wgrad_fp8_rowwise_cast": lambda: wgrad_fp8(cast=True),
        "weight_quant": lambda: quantize_weight(w, impl),
    }


def _layer_cases(m: int, k: int, n: int, device, impl: str) -> dict:
    """Forward and backward of the whole layer into an fp32 main grad (the sink), bf16 against the recipe."""
    dtype = torch.bfloat16
    w = torch.nn.Parameter((torch.randn(n, k, device=device) * 0.02).to(dtype))
    x = torch.randn(m, k, device=device).to(dtype).requires_grad_()
    dy = torch.randn(m, n, device=device).to(dtype)
    sink, w8 = Sink(w), quantize_weight(w, impl)
    xq, xs = quantize_rows(x.detach(), impl)

    def run(fn):
        def step():
            x.grad = None
            fn().backward(dy)
        return step

    # what the fused norm or SwiGLU hands on: the codes, and an anchor for d(x) (x itself: a leaf, whose grad is
    # stored as computed, as the producer's backward would take it)
    fused = Fp8Input(xq, xs, x)
    return {
        "fwdbwd_bf16": run(lambda: linear(x, w, None, sink)),
        "fwdbwd_fp8": run(lambda: fp8_linear(fused, w, None, w8, sink, impl)),
        "fwdbwd_fp8_tensor": run(lambda: fp8_linear(x, w, None, w8, sink, impl)),
    }


def _producer_cases(m: int, k: int, device, impl: str, kind: str) -> dict:
    """The forward of the kernel that writes the GEMM's input, in bf16 against writing its FP8 copy."""
    dtype = torch.bfloat16
    if kind == "norm":
        h, res, nw = (torch.randn(m, k, device=device).to(dtype), torch.randn(m, k, device=device),
                      torch.ones(k, device=device, dtype=dtype))
        return {f"norm_{name}": (lambda fp8: lambda: add_rms_norm(h, res, nw, 1e-5, impl=impl, fp8_out=fp8))(fp8)
                for name, fp8 in (("bf16", False), ("fp8", True))}
    gate_up = torch.randn(m, 2 * k, device=device).to(dtype)
    return {f"swiglu_{name}": (lambda fp8: lambda: swiglu(gate_up, impl=impl, fp8_out=fp8))(fp8)
            for name, fp8 in (("bf16", False), ("fp8", True))}


def cases_of(gemm: str, m: int, k: int, n: int, device, impl: str) -> dict:
    """Every case of one GEMM: name -> (fn, flops)."""
    flops = 2.0 * m * k * n
    out = {name: (fn, flops) for name, fn in _gemm_cases(m, k, n, device, impl).items()}
    out["weight_quant"] = (out["weight_quant"][0], 0.0)
    out.update({name: (fn, 3 * flops) for name, fn in _layer_cases(m, k, n, device, impl).items()})
    if gemm in ("qkv", "gate_up"):  # their input comes from the add+RMSNorm
        out.update({name: (fn, 0.0) for name, fn in _producer_cases(m, k, device, impl, "norm").items()})
    if gemm == "down":  # its input is the SwiGLU of gate_up's output
        out.update({name: (fn, 0.0) for name, fn in _producer_cases(m, k, device, impl, "swiglu").items()})
    return out


def measure(cases: dict, timer, rounds: int) -> dict:
    """name -> {ms, spread, tflops}: every case timed in turn, `rounds` times over (a GPU at its power cap drifts),
    the fastest reading kept and (max - min) / min in percent as the spread."""
    readings: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (fn, _) in cases.items():
            readings[name].append(timer(fn))
    out = {}
    for name, times in readings.items():
        best = min(times)
        rec = {"ms": round(best, 4), "spread": round(100 * (max(times) - best) / best, 2)}
        if cases[name][1]:
            rec["tflops"] = round(cases[name][1] / (best * 1e-3) / 1e12, 1)
        out[name] = rec
    return out


RECIPE = {"fwd": ("fwd_bf16", "fwd_fp8"), "dgrad": ("dgrad_bf16", "dgrad_fp8_cast"),
          "wgrad": ("wgrad_bf16", "wgrad_bf16_dequant"), "fwdbwd": ("fwdbwd_bf16", "fwdbwd_fp8")}


def speedups(recs: dict) -> dict:
    """bf16 ms over the recipe's ms for each part (above 1: FP8 is faster)."""
    return {part: round(recs[bf16]["ms"] / recs[fp8]["ms"], 3) for part, (bf16, fp8) in RECIPE.items()}


def versions(device) -> dict:
    import importlib.metadata as md

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "date": datetime.date.today().isoformat(),
           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    try:
        out["triton"] = md.version("triton")
    except md.PackageNotFoundError:
        out["triton"] = None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gemms", default=",".join(SEED_GEMMS))
    p.add_argument("--tokens", type=int, default=0, help=f"rows M (default {SEED_TOKENS}; {DRY_TOKENS} dry)")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetitions (ms)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dry_run", "--dry-run", action="store_true", help="CPU, tiny shapes, reference paths")
    args = p.parse_args(argv)
    shapes = DRY_GEMMS if args.dry_run else SEED_GEMMS
    gemms = [g for g in args.gemms.split(",") if g]
    bad = [g for g in gemms if g not in shapes]
    if bad:
        p.error(f"unknown --gemms {bad}; choose from {tuple(shapes)}")
    device = torch.device("cpu" if args.dry_run else "cuda")
    if not args.dry_run:
        why = fp8_unsupported(device) if torch.cuda.is_available() else "no CUDA GPU"
        if why:
            print(f"bench/fp8_gemm.py needs a GPU with FP8 tensor cores ({why}); --dry_run exercises it on the CPU",
                  file=sys.stderr)
            return 2
    m = args.tokens or (DRY_TOKENS if args.dry_run else SEED_TOKENS)
    impl = "torch" if args.dry_run else "triton"
    print(json.dumps({**versions(device), "tokens": m, "fp8_dtype": str(FP8_DTYPE), "command": sys.argv}))
    per_gemm = {}
    for gemm in gemms:
        k, n = shapes[gemm]
        recs = measure(cases_of(gemm, m, k, n, device, impl), lambda fn: time_ms(fn, device, args.warmup, args.rep),
                       args.rounds)
        for name, rec in recs.items():
            print(json.dumps({"gemm": gemm, "k": k, "n": n, "case": name, **rec}), flush=True)
        per_gemm[gemm] = recs
        print(json.dumps({"gemm": gemm, "summary": "bf16 ms / fp8 recipe ms", **speedups(recs)}), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    total = {part: round(sum(r[bf16]["ms"] for r in per_gemm.values())
                         / sum(r[fp8]["ms"] for r in per_gemm.values()), 3) for part, (bf16, fp8) in RECIPE.items()}
    print(json.dumps({"summary": "all GEMMs of a layer: bf16 ms / fp8 recipe ms", "gemms": gemms, **total}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
