"""Triton plumbing shared by the fused ops (model/ops) and the fused optimizer (optimizer/fused_adamw.py).

Triton is optional. Nothing here imports it at module import time, so the project imports on a machine without
Triton. Kernels are plain module-level functions wrapped in `LazyKernel`, which calls `triton.jit` on first launch,
separately for compiled and interpreted mode: Triton decides between the two when `triton.jit` runs (it reads
TRITON_INTERPRET then), so deferring it lets tests set TRITON_INTERPRET=1 at any point before their first launch.
"""
from __future__ import annotations

import functools
import importlib.util
import os


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when the triton package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


class JitHelper:
    """A Triton device function (called from kernels, never launched) that is jit-wrapped lazily, per mode.

    A kernel calls it by the module-level name it is bound to; `LazyKernel.jitted` rebinds that name in the
    kernel's module to the jitted function of the current mode before jitting the kernel, because Triton resolves
    a kernel's callees through its globals when it compiles it and only accepts jitted ones."""

    def __init__(self, fn):
        self.fn = fn
        self._jitted: dict[bool, object] = {}
        functools.update_wrapper(self, fn)

    def jitted(self):
        mode = interpret_mode()
        if mode not in self._jitted:
            import triton

            self._jitted[mode] = triton.jit(self.fn)
        return self._jitted[mode]


class LazyKernel:
    """A Triton kernel that is jit-wrapped on first launch (once for compiled mode, once for interpreter mode)."""

    def __init__(self, fn):
        self.fn = fn
        self._jitted: dict[bool, object] = {}
        self._helpers: dict[str, JitHelper] = {}  # the JitHelpers it calls, by the name its code uses
        functools.update_wrapper(self, fn)

    def jitted(self):
        mode = interpret_mode()
        kernel = self._jitted.get(mode)
        if kernel is None:
            import triton

            names = self.fn.__globals__
            for name in self.fn.__code__.co_names:
                if isinstance(names.get(name), JitHelper):
                    self._helpers[name] = names[name]
            for name, helper in self._helpers.items():
                names[name] = helper.jitted()
            kernel = triton.jit(self.fn)
            self._jitted[mode] = kernel
        return kernel

    def __getitem__(self, grid):
        return self.jitted()[grid]
