"""DDPConfig: settings of the hand-written data parallelism (flat command-line keys)."""
from __future__ import annotations

from dataclasses import dataclass

COMM_HOOKS = ("allreduce", "reduce_scatter", "bf16_allreduce")
LOSS_REDUCTIONS = ("mean", "sum")
FUSION_MODES = ("auto", "on", "off")


@dataclass
class DDPConfig:
    grad_reduce_in_fp32: bool = True  # main_grad dtype: fp32 (True) or the param dtype (False)
    overlap_grad_reduce: bool = True  # launch a bucket's reduction in backward as soon as it is ready
    bucket_size: int = 40_000_000  # elements per bucket (about; padded to lcm(world, 128))
    disable_bucketing: bool = False  # one bucket for the whole buffer
    comm_hook: str = "allreduce"  # allreduce | reduce_scatter | bf16_allreduce
    use_distributed_optimizer: bool = False  # ZeRO-1: shard fp32 main params and Adam state over ranks
    loss_reduction: str = "mean"  # mean: average grads over ranks; sum: divide by total tokens
    dist_timeout_s: int = 600  # seconds before a hung collective becomes an error
    check_for_unused_params: bool = True  # fail when a trainable param never receives a gradient
    # the model's linear layers add their weight grads into main_grad inside the weight-grad GEMM (no bf16 grad,
    # no separate accumulate kernel); auto = on for CUDA, off on the CPU
    gradient_accumulation_fusion: str = "auto"  # auto | on | off

    def validate(self) -> None:
        if self.comm_hook not in COMM_HOOKS:
            raise ValueError(f"--comm_hook={self.comm_hook!r} is not one of {', '.join(COMM_HOOKS)}")
        if self.loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"--loss_reduction={self.loss_reduction!r} is not one of {', '.join(LOSS_REDUCTIONS)}")
        if self.gradient_accumulation_fusion not in FUSION_MODES:
            raise ValueError(f"--gradient_accumulation_fusion={self.gradient_accumulation_fusion!r} is not one of "
                             f"{', '.join(FUSION_MODES)}")
        if self.bucket_size <= 0:
            raise ValueError(f"--bucket_size must be positive, got {self.bucket_size}")
        if self.dist_timeout_s <= 0:
            raise ValueError(f"--dist_timeout_s must be positive, got {self.dist_timeout_s}")
