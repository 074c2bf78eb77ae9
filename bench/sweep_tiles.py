"""Sweep the launch parameters of the memory-bound Triton kernels at the seed shapes (GPU only).

    python bench/sweep_tiles.py [--kernels=norm,swiglu] [--rows=16384] [--cols=2048] [--inter=5632]

Kernels: RMSNorm and add+RMSNorm forward/backward (block_r rows per program, num_warps, programs per SM of the
backward's persistent grid) and SwiGLU forward (the flat 1D kernel by block and num_warps, and the 2D tiles) and
backward (2D tiles). Times are device time: triton.testing.do_bench_cudagraph replays the launches from a CUDA
graph, so the host cost of the Python wrappers (tens of microseconds against kernels of 50 us) does not decide
the ranking. One JSON line per config with the mean ms and the fraction of the device-to-device copy bandwidth
measured the same way; the last lines name the best config of each kernel, and the torch.compile time of the
same reference forward for comparison.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.ops.rmsnorm import norm_bwd_triton, norm_fwd_triton, rms_norm_ref  # noqa: E402
from model.ops.swiglu import silu_mul_bwd_triton, silu_mul_fwd_triton, swiglu_ref  # noqa: E402


def device_ms(fn) -> float:
    from triton.testing import do_bench_cudagraph

    return float(do_bench_cudagraph(fn, rep=100))


def copy_bandwidth(n_bytes: int) -> float:
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    return 2 * n_bytes / (device_ms(lambda: dst.copy_(src)) * 1e-3)


class Best:
    def __init__(self, bw: float):
        self.bw, self.best = bw, {}

    def record(self, kernel: str, variant: str, n_bytes: int, fn, **config) -> None:
        ms = device_ms(fn)
        rec = {"kernel": kernel, "variant": variant, **config, "ms": round(ms, 4),
               "frac_copy": round(n_bytes / (ms * 1e-3) / self.bw, 3)}
        print(json.dumps(rec), flush=True)
        key = (kernel, variant)
        self.best[key] = min(self.best.get(key, rec), rec, key=lambda q: q["ms"])


def sweep_norm(best: Best, n: int, d: int) -> None:
    x = torch.randn(n, d, device="cuda").to(torch.bfloat16)
    r = torch.randn(n, d, device="cuda")
    w = torch.randn(d, device="cuda").to(torch.bfloat16)
    dy, ds = torch.randn_like(x), torch.randn_like(r)
    for variant, fwd_bytes, bwd_bytes in (("plain", 4, 6), ("add", 12, 16)):
        res, sum_dtype = (r, torch.float32) if variant == "add" else (None, None)
        _, s, rstd = norm_fwd_triton(x, w, 1e-5, residual2=res, sum_dtype=sum_dtype)
        xin = s if s is not None else x
        for block_r, warps in itertools.product((1, 2, 4, 8), (2, 4, 8, 16)):
            best.record("norm_fwd", variant, fwd_bytes * n * d, lambda: norm_fwd_triton(
                x, w, 1e-5, residual2=res, sum_dtype=sum_dtype, block_r=block_r, num_warps=warps),
                block_r=block_r, num_warps=warps)
        for block_r, warps, per_sm in itertools.product((1, 2, 4), (4, 8, 16), (4, 8, 16)):
            best.record("norm_bwd", variant, bwd_bytes * n * d, lambda: norm_bwd_triton(
                dy, xin, w, rstd, dx_dtype=torch.float32 if variant == "add" else x.dtype,
                ds2=ds if variant == "add" else None, dx2_dtype=x.dtype if variant == "add" else None,
                block_r=block_r, num_warps=warps, per_sm=per_sm), block_r=block_r, num_warps=warps, per_sm=per_sm)
    comp = torch.compile(lambda a, b: rms_norm_ref(a, b, 1e-5))
    best.record("norm_fwd", "compile_of_reference", 4 * n * d, lambda: comp(x, w))


def sweep_swiglu(best: Best, n: int, i: int) -> None:
    gu = torch.randn(n, 2 * i, device="cuda").to(torch.bfloat16)
    g2, u2 = gu[:, :i], gu[:, i:]
    do = torch.randn(n, i, device="cuda").to(torch.bfloat16)
    dgu = torch.empty_like(gu)
    fwd_bytes, bwd_bytes = 6 * n * i, 10 * n * i
    for block, warps in itertools.product((512, 1024, 2048, 4096), (2, 4, 8, 16)):
        best.record("swiglu_fwd", "flat", fwd_bytes, lambda: silu_mul_fwd_triton(
            g2, u2, flat=True, block=block, num_warps=warps), block=block, num_warps=warps)
    for block_r, block_c, warps in itertools.product((1, 2, 4), (512, 1024, 2048), (4, 8, 16)):
        tiles = (block_r, block_c, warps)
        best.record("swiglu_fwd", "2d", fwd_bytes, lambda: silu_mul_fwd_triton(g2, u2, flat=False, tiles=tiles),
                    block_r=block_r, block_c=block_c, num_warps=warps)
        best.record("swiglu_bwd", "2d", bwd_bytes, lambda: silu_mul_bwd_triton(
            do, g2, u2, dgu[:, :i], dgu[:, i:], tiles=tiles), block_r=block_r, block_c=block_c, num_warps=warps)
    comp = torch.compile(swiglu_ref)
    best.record("swiglu_fwd", "compile_of_reference", fwd_bytes, lambda: comp(gu))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", default="norm,swiglu", help="comma list from norm, swiglu")
    ap.add_argument("--rows", type=int, default=16384, help="tokens (micro-batch x seq)")
    ap.add_argument("--cols", type=int, default=2048, help="hidden size (the norms)")
    ap.add_argument("--inter", type=int, default=5632, help="intermediate size (SwiGLU)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/sweep_tiles.py needs a CUDA GPU")
    kernels = [k for k in args.kernels.split(",") if k]
    unknown = sorted(set(kernels) - {"norm", "swiglu"})
    if unknown:
        raise SystemExit(f"--kernels has unknown names {unknown}; choose from norm, swiglu")
    best = Best(copy_bandwidth(1 << 30))
    if "norm" in kernels:
        sweep_norm(best, args.rows, args.cols)
    if "swiglu" in kernels:
        sweep_swiglu(best, args.rows, args.inter)
    for rec in best.best.values():
        print(json.dumps({"best": True, **rec}), flush=True)


if __name__ == "__main__":
    main()
