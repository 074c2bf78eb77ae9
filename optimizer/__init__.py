"""Optimizers: mixed precision (fp32 main params, loss scaling), ZeRO-1, clipping and the LR schedule.

``build_optimizer(cfg, ddp, param_dtype, ctx)`` picks the class; see optimizer/mixed_precision.py.
"""
from __future__ import annotations

import torch

from optimizer.config import OptimizerConfig
from optimizer.distributed import DistributedOptimizer
from utils.triton_env import interpret_mode, triton_available
from optimizer.lr_schedule import get_lr
from optimizer.mixed_precision import FP32Optimizer, Float16OptimizerWithFloat16Params, MixedPrecisionOptimizer

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _validate(cfg: OptimizerConfig, ddp, param_dtype: torch.dtype, ctx) -> None:
    """Reject combinations that would be wrong or silently inexact, naming the flags to change."""
    cfg.validate()
    if param_dtype not in _DTYPES:
        raise TypeError(f"param dtype {param_dtype} is not one of float32, bfloat16, float16; set --dtype")
    if cfg.loss_scale > 0 and param_dtype != torch.float16:
        raise ValueError(f"--loss_scale={cfg.loss_scale} only applies to fp16 params, got {param_dtype}; "
                         f"use --loss_scale=0 or --dtype=float16")
    if cfg.overlap_optim_step and cfg.grad_clip > 0:
        raise ValueError(f"--overlap_optim_step steps each bucket before the global grad norm is known, so it "
                         f"cannot clip exactly: set --grad_clip=0 or --overlap_optim_step=False "
                         f"(got grad_clip={cfg.grad_clip})")
    if cfg.overlap_optim_step and param_dtype == torch.float16:
        raise ValueError("--overlap_optim_step cannot skip a step on an inf/NaN found in a later bucket, so it "
                         "does not support fp16 loss scaling: use --dtype=bfloat16 or --overlap_optim_step=False")
    ddp_zero = bool(getattr(ddp, "use_distributed_optimizer", False))
    if cfg.use_distributed_optimizer != ddp_zero:
        raise ValueError(f"--use_distributed_optimizer={cfg.use_distributed_optimizer} but the DDP was built with "
                         f"use_distributed_optimizer={ddp_zero}; build DistributedDataParallel(..., "
                         f"use_distributed_optimizer=cfg.use_distributed_optimizer) so grads are reduce-scattered "
                         f"exactly when the optimizer is sharded")
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

    ZeRO-1 (--use_distributed_optimizer) -> DistributedOptimizer (any dtype; fp16 with a scaler);
    fp32 params -> FP32Optimizer; bf16/fp16 params -> Float16OptimizerWithFloat16Params.

    Order: model -> DDP -> ddp.broadcast_params() -> (load model weights) -> build_optimizer ->
    (optimizer.load_state_dict on resume). The fp32 main params are copied from the model's params
    here; after changing the weights later without optimizer state, call optimizer.reload_model_params().
    With --overlap_param_gather, call ddp.finish_param_sync() before reading the model's weights
    outside a forward (saving a checkpoint). With --overlap_optim_step, call set_lr before the backward.
    """
    _validate(cfg, ddp, param_dtype, ctx)
    if cfg.use_distributed_optimizer:
        cls = DistributedOptimizer
    elif param_dtype == torch.float32:
        cls = FP32Optimizer
    else:
        cls = Float16OptimizerWithFloat16Params
    return cls(cfg, ddp, ctx, param_dtype)


__all__ = [
    "build_optimizer", "get_lr", "MixedPrecisionOptimizer", "Float16OptimizerWithFloat16Params",
    "FP32Optimizer", "DistributedOptimizer", "OptimizerConfig",
]
