"""Sweep the launch parameters of the RMSNorm / add+RMSNorm Triton kernels at the seed shape (GPU only).

    python bench/sweep_norm.py [--rows=16384] [--cols=2048]

One JSON line per (kernel, variant, block_r, num_warps[, per_sm]) with the median ms and the fraction of the
device-to-device copy bandwidth measured in the same run; the last lines name the best config of each.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.ops.rmsnorm import norm_bwd_triton, norm_fwd_triton  # noqa: E402


def copy_bandwidth(n_bytes: int) -> float:
    import triton.testing

    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * n_bytes / (ms * 1e-3)


def main() -> None:
    import triton.testing

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--cols", type=int, default=2048)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/sweep_norm.py needs a CUDA GPU")
    n, d = args.rows, args.cols
    bw = copy_bandwidth(1 << 30)
    x = torch.randn(n, d, device="cuda").to(torch.bfloat16)
    r = torch.randn(n, d, device="cuda")
    w = torch.randn(d, device="cuda").to(torch.bfloat16)
    dy = torch.randn_like(x)
    ds = torch.randn_like(r)
    best = {}
    variants = {"plain": dict(fwd_bytes=4, bwd_bytes=6), "add": dict(fwd_bytes=12, bwd_bytes=16)}
    for variant, sizes in variants.items():
        res, sum_dtype = (r, torch.float32) if variant == "add" else (None, None)
        _, s, rstd = norm_fwd_triton(x, w, 1e-5, residual2=res, sum_dtype=sum_dtype)
        xin = s if s is not None else x
        for block_r, warps in itertools.product((1, 2, 4, 8, 16), (4, 8, 16)):
            ms = triton.testing.do_bench(lambda: norm_fwd_triton(x, w, 1e-5, residual2=res, sum_dtype=sum_dtype,
                                                                 block_r=block_r, num_warps=warps),
                                         return_mode="median")
            rec = {"kernel": "fwd", "variant": variant, "block_r": block_r, "num_warps": warps, "ms": round(ms, 4),
                   "frac_copy": round(sizes["fwd_bytes"] * n * d / (ms * 1e-3) / bw, 3)}
            print(json.dumps(rec), flush=True)
            key = ("fwd", variant)
            best[key] = min(best.get(key, rec), rec, key=lambda q: q["ms"])
        for block_r, warps, per_sm in itertools.product((1, 2, 4, 8), (4, 8, 16), (4, 8, 16, 32)):
            ms = triton.testing.do_bench(lambda: norm_bwd_triton(
                dy, xin, w, rstd, dx_dtype=torch.float32 if variant == "add" else x.dtype,
                ds2=ds if variant == "add" else None, dx2_dtype=x.dtype if variant == "add" else None,
                block_r=block_r, num_warps=warps, per_sm=per_sm), return_mode="median")
            rec = {"kernel": "bwd", "variant": variant, "block_r": block_r, "num_warps": warps, "per_sm": per_sm,
                   "ms": round(ms, 4), "frac_copy": round(sizes["bwd_bytes"] * n * d / (ms * 1e-3) / bw, 3)}
            print(json.dumps(rec), flush=True)
            key = ("bwd", variant)
            best[key] = min(best.get(key, rec), rec, key=lambda q: q["ms"])
    for rec in best.values():
        print(json.dumps({"best": True, **rec}), flush=True)


if __name__ == "__main__":
    main()
