"""DDPConfig: settings of the hand-written data parallelism (flat command-line keys)."""
from __future__ import annotations

from dataclasses import dataclass

COMM_HOOKS = ("allreduce", "reduce_scatter", "bf16_allreduce", "powersgd")  # what "auto" resolves among
FUSION_MODES = ("auto", "on", "off")


def check_powersgd(rank: int, start_iter: int, min_compression_rate: float, seed: int) -> None:
    """The PowerSGD settings' rules (DDPConfig.validate and PowerSGDState share them)."""
    if rank < 1:
        raise ValueError(f"--powersgd_rank must be at least 1, got {rank}; 16 is the default")
    if start_iter < 0:
        raise ValueError(f"--powersgd_start_iter counts steps and cannot be negative, got {start_iter}")
    if not min_compression_rate > 0:
        raise ValueError(f"--powersgd_min_compression_rate must be positive, got {min_compression_rate}; "
                         f"2.0 is the default")
    if not 0 <= seed < 2**63:
        raise ValueError(f"--powersgd_seed must be in [0, 2**63), got {seed}")


@dataclass(frozen=True)
class DDPConfig:
    """The hand-written data parallelism: buffers, buckets, the comm hook (PowerSGD's settings included)."""

    grad_reduce_in_fp32: bool = True  # main_grad dtype: fp32 (True) or the param dtype (False)
    overlap_grad_reduce: bool = True  # launch a bucket's reduction in backward as soon as it is ready
    bucket_size: int = 40_000_000  # elements per bucket (about; padded to lcm(world, 128))
    disable_bucketing: bool = False  # one bucket for the whole buffer
    # auto = allreduce, or reduce_scatter with --use_distributed_optimizer (each rank needs only its shard)
    comm_hook: str = "auto"  # auto | allreduce | reduce_scatter | bf16_allreduce | powersgd
    use_distributed_optimizer: bool = False  # ZeRO-1: shard fp32 main params and Adam state over ranks
    dist_timeout_s: int = 600  # seconds before a hung collective becomes an error
    check_for_unused_params: bool = True  # fail when a trainable param never receives a gradient
    # the model's linear layers add their weight grads into main_grad inside the weight-grad GEMM (no bf16 grad,
    # no separate accumulate kernel); auto = on for CUDA, off on the CPU
    gradient_accumulation_fusion: str = "auto"  # auto | on | off
    # PowerSGD (--comm_hook=powersgd, parallel/comm_hooks/powersgd.py): each n×m gradient matrix is sent as
    # (n+m)·rank numbers instead of n·m
    powersgd_rank: int = 16  # rank of each gradient matrix's approximation (higher: closer to all-reduce, more bytes)
    powersgd_start_iter: int = 10  # steps of plain all-reduce before compression (about 3% of the run measured best)
    powersgd_min_compression_rate: float = 2.0  # send a matrix uncompressed unless n·m / ((n+m)·rank) exceeds this
    powersgd_error_feedback: bool = True  # carry what the approximation missed into the next step (per rank)
    powersgd_warm_start: bool = True  # start each step's power iteration from the last step's Q
    powersgd_seed: int = 0  # seed of the random Q, the same on every rank (independent of --seed)

    def __post_init__(self) -> None:
        # "auto" is resolved at construction (the config is frozen afterwards); a hook the user named stays, and
        # configurator.validate() refuses one that does not fit ZeRO-1
        if self.comm_hook == "auto":
            object.__setattr__(self, "comm_hook", "reduce_scatter" if self.use_distributed_optimizer else "allreduce")

    def validate(self) -> None:
        if self.comm_hook not in COMM_HOOKS:
            raise ValueError(f"--comm_hook={self.comm_hook!r} is not one of {', '.join(COMM_HOOKS)}")
        if self.gradient_accumulation_fusion not in FUSION_MODES:
            raise ValueError(f"--gradient_accumulation_fusion={self.gradient_accumulation_fusion!r} is not one of "
                             f"{', '.join(FUSION_MODES)}")
        if self.bucket_size <= 0:
            raise ValueError(f"--bucket_size must be positive, got {self.bucket_size}")
        if self.dist_timeout_s <= 0:
            raise ValueError(f"--dist_timeout_s must be positive, got {self.dist_timeout_s}")
        check_powersgd(self.powersgd_rank, self.powersgd_start_iter, self.powersgd_min_compression_rate,
                       self.powersgd_seed)
