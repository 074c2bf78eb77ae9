"""The (state, hook) pair of each --comm_hook name (DDPConfig.comm_hook)."""
from __future__ import annotations

from parallel.comm_hooks.bucket import Hook
from parallel.comm_hooks.default import DefaultHookState, allreduce_hook, bf16_compress_wrapper, reduce_scatter_hook
from parallel.comm_hooks.powersgd import PowerSGDState, powersgd_hook
from parallel.config import COMM_HOOKS, DDPConfig


def build_hook(cfg: DDPConfig) -> tuple[DefaultHookState | PowerSGDState, Hook]:
    """The (state, hook) pair for cfg.comm_hook; PowerSGD takes its settings from cfg's powersgd_* keys."""
    name = cfg.comm_hook
    if name == "allreduce":
        return DefaultHookState(), allreduce_hook
    if name == "reduce_scatter":
        return DefaultHookState(), reduce_scatter_hook
    if name == "bf16_allreduce":
        return DefaultHookState(), bf16_compress_wrapper(allreduce_hook)
    if name == "powersgd":
        return PowerSGDState.from_config(cfg), powersgd_hook
    raise ValueError(f"--comm_hook={name!r} is not one of {', '.join(COMM_HOOKS)}")
