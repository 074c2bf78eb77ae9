"""OptimizerConfig: AdamW, the LR schedule, clipping, loss scaling and the overlaps (flat command-line keys).

ZeRO-1 itself is switched on in the DDP's config (DDPConfig.use_distributed_optimizer): the DDP reduce-scatters
for it, and the optimizer learns it from the DDP. Rules that tie these flags to other sections live in
configurator.validate().
"""
from __future__ import annotations

from dataclasses import dataclass

OPTIMIZER_IMPLS = ("auto", "triton", "torch_fused", "foreach", "apex")
MAIN_PARAMS = ("auto", "fp32", "split")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW, the LR schedule, clipping, loss scaling and the overlaps of the optimizer step."""

    learning_rate: float = 3e-4  # peak LR after warmup
    min_lr: float = 3e-5  # LR at the end of the cosine decay
    warmup_iters: int = 2000  # optimizer steps of linear warmup
    lr_decay_iters: int = 0  # steps of cosine decay; 0 = max_iters
    decay_lr: bool = True  # False keeps the LR at learning_rate after warmup
    weight_decay: float = 0.1  # AdamW decay, applied to params with ndim >= 2 only
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    adam_eps: float = 1e-8  # AdamW denominator epsilon
    grad_clip: float = 1.0  # max global grad norm (all params, all ranks); 0 disables
    optimizer_impl: str = "auto"  # auto|triton|torch_fused|foreach|apex (auto: triton on CUDA, foreach on CPU)
    loss_scale: float = 0.0  # fp16 only: 0 = dynamic loss scaling, >0 = this fixed scale
    initial_loss_scale: float = 65536.0  # dynamic scaler start value
    min_loss_scale: float = 1.0  # dynamic scaler floor
    loss_scale_window: int = 1000  # clean steps before the dynamic scale doubles
    hysteresis: int = 2  # overflowing steps tolerated before the scale halves
    overlap_param_gather: bool = False  # ZeRO-1: hide the param all-gather behind the next forward
    overlap_optim_step: bool = False  # step each bucket's shard as soon as its reduction finishes
    # bf16/fp32: one host read of the grad norm per step; fp16 always skips through its loss scaler
    skip_nonfinite: bool = True  # skip the update on every rank when the global grad norm is inf/NaN
    # split: the bf16 params are the high half of each fp32 main value, an int16 tensor the low half (same
    # update, 2 bytes/param less; triton impl only); fp32: a separate fp32 copy
    main_params: str = "auto"  # auto|fp32|split fp32 main params of bf16 models (auto: split with the triton impl)

    def validate(self) -> None:
        if self.optimizer_impl not in OPTIMIZER_IMPLS:
            raise ValueError(f"--optimizer_impl={self.optimizer_impl!r} is not one of {', '.join(OPTIMIZER_IMPLS)}")
        if self.main_params not in MAIN_PARAMS:
            raise ValueError(f"--main_params={self.main_params!r} is not one of {', '.join(MAIN_PARAMS)}")
        if self.learning_rate <= 0 or self.min_lr < 0 or self.min_lr > self.learning_rate:
            raise ValueError(
                f"need 0 <= --min_lr <= --learning_rate and --learning_rate > 0, "
                f"got learning_rate={self.learning_rate}, min_lr={self.min_lr}"
            )
        if self.warmup_iters < 0 or self.lr_decay_iters < 0:
            raise ValueError("--warmup_iters and --lr_decay_iters must be >= 0")
        if self.grad_clip < 0:
            raise ValueError(f"--grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        if self.loss_scale < 0:
            raise ValueError(f"--loss_scale must be >= 0 (0 = dynamic), got {self.loss_scale}")
