"""TrainConfig: the run itself (where it writes, how long it trains, how it logs, saves and samples).

The trainer (tasks/trainer.py) and the tasks read it; configurator.py composes it into the config tree.
"""
from __future__ import annotations

from dataclasses import dataclass

TASK_TYPES = ("pretrain",)  # each entry is one file in tasks/; sft and dpo join it with their issue
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class TrainConfig:
    """The run itself: where it writes, how long it trains, how it logs and saves."""

    out_dir: str = "out/default"  # run directory: exp_config.py, ckpt/, metrics.jsonl, tb/, loss.png
    task_type: str = "pretrain"  # pretrain (sft and dpo arrive with their own issue)
    batch_size: int = 8  # sequences per micro-batch per rank
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step across ALL ranks (divided by world size)
    max_iters: int = 1000  # optimizer steps of the whole run
    eval_interval: int = 250  # optimizer steps between validation passes (0 disables)
    eval_iters: int = 20  # micro-batches per rank in one validation pass
    log_interval: int = 10  # optimizer steps between log lines
    save_interval: int = 500  # optimizer steps between checkpoints (one is always written at the end)
    keep_last_n: int = 2  # complete checkpoints kept (>= 2), besides best/
    seed: int = 1337  # seed of model init and dropout (data order uses data_seed)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # param dtype: auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    compile: bool = False  # torch.compile the model
    resume: bool = False  # continue the run in out_dir from its newest complete checkpoint
    init_from: str = ""  # start from the weights of a run dir or checkpoint dir (no optimizer state)
    tensorboard: bool = True  # also write TensorBoard scalars to <out_dir>/tb
    peak_tflops: float = 0.0  # device bf16 dense peak for MFU; 0 = known devices only (H100/H200, A100)
    sample_tokens: int = 64  # tokens generated as a sample at the end (0 disables)
    sample_prompt: str = "def "  # prompt of that sample

    def validate(self) -> None:
        for name, value, allowed in (("task_type", self.task_type, TASK_TYPES), ("device", self.device, DEVICES),
                                     ("dtype", self.dtype, DTYPES)):
            if value not in allowed:
                raise ValueError(f"--{name}={value!r} is not one of {', '.join(allowed)}")
        for name in ("batch_size", "gradient_accumulation_steps", "max_iters", "log_interval", "save_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.eval_interval < 0 or self.eval_iters < 0:
            raise ValueError("--eval_interval and --eval_iters must be >= 0 (0 disables evaluation)")
        if self.keep_last_n < 2:
            raise ValueError(f"--keep_last_n must be >= 2 so a torn newest checkpoint leaves one to resume from, "
                             f"got {self.keep_last_n}")
        if self.resume and self.init_from:
            raise ValueError("--resume and --init_from exclude each other: resume continues a run, init_from starts "
                             "a new one")
