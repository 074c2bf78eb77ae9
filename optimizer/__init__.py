"""Optimizers: mixed precision (fp32 main params, loss scaling), ZeRO-1, clipping and the LR schedule.

``build_optimizer(cfg, ddp, param_dtype, ctx)`` picks the class; see optimizer/mixed_precision.py.
"""
from __future__ import annotations

import torch

from optimizer.config import OptimizerConfig
from optimizer.distributed import DistributedOptimizer
from utils.triton_env import interpret_mode, triton_available
from optimizer.lr_schedule import get_lr
from optimizer.mixed_precision import MixedPrecisionOptimizer

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _validate(cfg: OptimizerConfig, ddp, param_dtype: torch.dtype, ctx) -> None:
    """Reject what only the runtime knows to be wrong (dtypes, device, triton), naming the flags to change.

    The rules between flags are configurator.validate()'s; here they are invariants.
    """
    cfg.validate()
    assert not cfg.overlap_param_gather or ddp.use_distributed_optimizer, \
        "--overlap_param_gather without ZeRO-1 (configurator.validate() rejects it)"
    assert not (cfg.overlap_optim_step and cfg.grad_clip > 0), \
        "--overlap_optim_step with --grad_clip > 0 (configurator.validate() rejects it)"
    if param_dtype not in _DTYPES:
        raise TypeError(f"param dtype {param_dtype} is not one of float32, bfloat16, float16; set --dtype")
    if cfg.optimizer_impl == "apex" and ctx.device.type != "cuda":
        raise ValueError("--optimizer_impl=apex needs CUDA; use --optimizer_impl=auto on the CPU")
    if cfg.optimizer_impl == "triton":
        if not triton_available():
            raise ValueError("--optimizer_impl=triton needs the triton package (pip install triton); "
                             "use --optimizer_impl=auto")
        if ctx.device.type != "cuda" and not interpret_mode():
            raise ValueError("--optimizer_impl=triton needs CUDA (or TRITON_INTERPRET=1, the Triton CPU interpreter, "
                             "for tests); use --optimizer_impl=auto on the CPU")
    for bucket in ddp.buckets:
        if bucket.param_data.dtype != param_dtype:
            raise TypeError(f"a DDP bucket holds {bucket.param_data.dtype} params but param_dtype={param_dtype}; cast "
                            f"the whole model to --dtype before wrapping it in DDP")


def build_optimizer(cfg: OptimizerConfig, ddp, param_dtype: torch.dtype, ctx) -> MixedPrecisionOptimizer:
    """The optimizer for this run.

    ZeRO-1 (ddp.use_distributed_optimizer) -> DistributedOptimizer, else MixedPrecisionOptimizer (any dtype:
    fp32 params are their own main params, bf16/fp16 get fp32 ones, fp16 adds a loss scaler).

    Order: model -> DDP -> ddp.broadcast_params() -> (load model weights) -> build_optimizer ->
    (optimizer.load_state_dict on resume). The fp32 main params are copied from the model's params
    here; after changing the weights later without optimizer state, call optimizer.reload_model_params().
    With --overlap_param_gather, call ddp.finish_param_sync() before reading the model's weights
    outside a forward (saving a checkpoint). With --overlap_optim_step, call set_lr before the backward.
    """
    _validate(cfg, ddp, param_dtype, ctx)
    cls = DistributedOptimizer if ddp.use_distributed_optimizer else MixedPrecisionOptimizer
    return cls(cfg, ddp, ctx, param_dtype)


__all__ = [
    "build_optimizer", "get_lr", "MixedPrecisionOptimizer", "DistributedOptimizer", "OptimizerConfig",
]
