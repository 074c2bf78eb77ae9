"""Shared helpers for the fused ops: impl resolution, lazy Triton kernels, launch sizes.

Triton is optional. Nothing here imports it at module import time, so `import model.ops` works on a machine
without Triton; asking for impl="triton" there raises a RuntimeError that says what to install or which flag to
change.

Kernels are written as plain module-level functions and wrapped in `LazyKernel` (utils/triton_env.py, shared
with the optimizer's fused AdamW), which jit-wraps them on first launch per mode.
"""
from __future__ import annotations

import functools

import torch

from utils.triton_env import JitHelper, LazyKernel, interpret_mode, triton_available  # noqa: F401 (re-exported)

IMPLS = ("auto", "triton", "torch")


def resolve_impl(flag: str, device: torch.device | str) -> str:
    """Map an op flag ("auto" | "triton" | "torch") and a tensor device to "triton" or "torch".

    1. Reject unknown flags.
    2. "auto": "triton" on CUDA when triton is importable, else "torch".
    3. "triton": require the triton package, and on a non-CUDA device require the interpreter
       (TRITON_INTERPRET=1), because compiled Triton kernels only run on GPUs.
    """
    if flag not in IMPLS:
        raise ValueError(f"impl={flag!r} is not one of {IMPLS}; pass impl='auto', 'triton' or 'torch'")
    device = torch.device(device)
    if flag == "torch":
        return "torch"
    if flag == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError("impl='triton' needs the triton package (pip install triton); or pass impl='torch'")
    if device.type != "cuda" and not interpret_mode():
        raise RuntimeError(
            f"impl='triton' on a {device.type} tensor needs the Triton CPU interpreter: set TRITON_INTERPRET=1 "
            f"in the environment, or use impl='auto'/'torch' off the GPU"
        )
    return "triton"


@torch.compiler.disable
def apply_eager(function_cls, *args):
    """`function_cls.apply(*args)` outside any torch.compile graph (a graph break around each fused op).

    Dynamo would otherwise capture the Triton launches inside our autograd Functions with strides and sizes
    read from fake tensors at trace time, and the compiled graph then hit an illegal memory access on an H100
    (bench/mfu.py --cases=z2all_compile, 2026-11-23). Run eagerly, the ops see the real tensors; torch.compile
    still fuses the glue between them.
    """
    return function_cls.apply(*args)


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive ints (grid sizes)."""
    return (a + b - 1) // b


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def num_warps_for(block_elems: int) -> int:
    """Warps for a program touching `block_elems` elements per step: more lanes for wider blocks."""
    if block_elems >= 16384:
        return 16
    if block_elems >= 4096:
        return 8
    if block_elems >= 1024:
        return 4
    return 2


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def persistent_programs(device: torch.device, work_items: int, per_sm: int = 4) -> int:
    """Program count for loops that stride over work (per-program partial sums): a few per SM on CUDA,
    a small number in the interpreter (enough to exercise the partial-sum reduction)."""
    if device.type == "cuda":
        return max(1, min(work_items, per_sm * _sm_count(device.index or torch.cuda.current_device())))
    return max(1, min(work_items, 3))


def check_float(name: str, t: torch.Tensor) -> None:
    """TypeError unless t is fp32/bf16/fp16."""
    if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{name} has dtype {t.dtype}; the fused ops take float32, bfloat16 or float16 tensors")


def rows_2d(x: torch.Tensor) -> torch.Tensor:
    """View x as (rows, last_dim) with a unit last-dim stride, copying only when no such view exists."""
    if x.dim() == 0:
        raise ValueError("expected a tensor with at least one dimension, got a scalar")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[-1] > 1 and x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2
