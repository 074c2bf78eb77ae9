"""TrainConfig: the run itself (where it writes, how long it trains, how it logs, saves and samples).

The trainer (tasks/trainer.py) and the tasks read it; configurator.py composes it into the config tree.
"""
from __future__ import annotations

from dataclasses import dataclass

TASK_TYPES = ("pretrain", "sft", "dpo")  # each entry is one file in tasks/
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# keys of one invocation of train.py, not of the run: never written to exp_config.json
PER_INVOCATION = ("resume", "auto_resume", "resume_step", "skip_data_to", "fault_injection", "dry_run")


@dataclass(frozen=True)
class TrainConfig:
    """The run itself: where it writes, how long it trains, how it logs and saves."""

    out_dir: str = "out/default"  # run directory: exp_config.json, ckpt/, metrics.jsonl, tb/, loss.png
    task_type: str = "pretrain"  # pretrain | sft (conversations) | dpo (preference pairs)
    batch_size: int = 8  # sequences per micro-batch per rank
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step across ALL ranks (divided by world size)
    max_iters: int = 1000  # optimizer steps of the whole run
    eval_interval: int = 250  # optimizer steps between validation passes (0 disables)
    eval_iters: int = 20  # micro-batches of held-out data in one validation pass, split across the ranks
    log_interval: int = 10  # optimizer steps between log lines
    save_interval: int = 500  # optimizer steps between checkpoints (one is always written at the end)
    keep_last_n: int = 2  # complete checkpoints kept (>= 2), besides best/
    seed: int = 1337  # seed of model init and dropout (data order uses data_seed)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # param dtype: auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    compile: bool = False  # torch.compile the model
    memory_check: bool = True  # refuse at start-up a model + micro-batch estimated not to fit the device
    resume: bool = False  # continue the run in out_dir from its newest complete checkpoint
    auto_resume: bool = False  # resume when out_dir holds a complete checkpoint, else start it (fixed launch commands)
    init_from: str = ""  # start from the weights of a run dir or checkpoint dir (no optimizer state)
    tensorboard: bool = True  # also write TensorBoard scalars to <out_dir>/tb
    peak_tflops: float = 0.0  # device bf16 dense peak for MFU; 0 = known devices only (H100/H200, A100)
    sample_tokens: int = 64  # tokens generated as a sample at the end (0 disables)
    sample_prompt: str = "def main("  # prompt of that sample (pretraining; SFT and DPO reply to a held-out prompt)
    max_skipped_steps: int = 10  # non-finite steps skipped in a row before the run stops (exit 3, checkpoints kept)
    spike_rollback: bool = False  # exit 4 on a loss spike, for monitor_process.py to roll back past its data
    spike_factor: float = 3.0  # a spike: the loss above spike_factor x the median of the last 100 step losses ...
    spike_patience: int = 5  # ... for this many steps in a row
    resume_step: int = -1  # with --resume: the checkpoint step to resume from; -1 = the newest complete one
    skip_data_to: int = 0  # with --resume: move the data position forward to this many consumed micro-batches
    dry_run: bool = False  # print the data plan (each source's tokens, share, epochs for max_iters) and exit
    fault_injection: str = ""  # tests only, first process of a run: sleep:rank=R,iter=I,seconds=S | spike:from=I,to=J

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
        for name in ("max_skipped_steps", "spike_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not self.spike_factor > 1.0:
            raise ValueError(f"--spike_factor must be > 1 (a multiple of the median loss), got {self.spike_factor}")
        if (self.resume_step >= 0 or self.skip_data_to > 0) and not self.resume:
            raise ValueError("--resume_step and --skip_data_to pick where a resumed run continues: add --resume")
        if self.dry_run and self.task_type != "pretrain":
            raise ValueError(f"--dry_run plans the pretraining data; drop it for --task_type={self.task_type}")
        if self.fault_injection:
            from tasks.faults import Fault

            Fault.parse(self.fault_injection)  # fails at start-up with the accepted forms
        if self.keep_last_n < 2:
            raise ValueError(f"--keep_last_n must be >= 2 so a torn newest checkpoint leaves one to resume from, "
                             f"got {self.keep_last_n}")


CHAT_FORMATS = ("auto", "messages", "sharegpt", "alpaca")
TRUNCATION_MODES = ("keep_end", "keep_start")
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass(frozen=True)
class FinetuneConfig:
    """SFT and DPO (--task_type=sft|dpo): how records become examples, and the DPO objective."""

    pack_sequences: bool = True  # SFT: pack conversations into rows of max_seq_len (False: pad each micro-batch)
    chat_format: str = "auto"  # SFT records: auto | messages | sharegpt | alpaca
    max_prompt_len: int = 0  # DPO: prompt tokens kept when a pair is too long; 0 = max_seq_len // 2
    truncation_mode: str = "keep_end"  # DPO prompt truncation: keep_end (drop from the left) | keep_start
    skip_bad_records: bool = False  # skip and count malformed records instead of failing on the first
    ref_from: str = ""  # DPO reference model (run, checkpoint or saved dir); "" = the --init_from weights
    dpo_beta: float = 0.1  # DPO temperature beta of the implicit reward beta * (log pi - log ref)
    dpo_loss_type: str = "sigmoid"  # sigmoid (DPO; cDPO with label smoothing) | ipo | hinge
    dpo_label_smoothing: float = 0.0  # cDPO: probability that a preference label is flipped, in [0, 0.5)
    precompute_ref_logps: bool = False  # DPO: reference log-probs computed once, stored beside the data, ref freed

    def validate(self) -> None:
        for name, value, allowed in (("chat_format", self.chat_format, CHAT_FORMATS),
                                     ("truncation_mode", self.truncation_mode, TRUNCATION_MODES),
                                     ("dpo_loss_type", self.dpo_loss_type, DPO_LOSS_TYPES)):
            if value not in allowed:
                raise ValueError(f"--{name}={value!r} is not one of {', '.join(allowed)}")
        if self.max_prompt_len < 0:
            raise ValueError(f"--max_prompt_len must be >= 0 (0 = half of max_seq_len), got {self.max_prompt_len}")
        if not self.dpo_beta > 0:
            raise ValueError(f"--dpo_beta must be > 0, got {self.dpo_beta}")
        if not 0.0 <= self.dpo_label_smoothing < 0.5:
            raise ValueError(f"--dpo_label_smoothing must be in [0, 0.5), got {self.dpo_label_smoothing}")
        if self.dpo_label_smoothing and self.dpo_loss_type != "sigmoid":
            raise ValueError(f"--dpo_label_smoothing is cDPO's, for --dpo_loss_type=sigmoid (got "
                             f"{self.dpo_loss_type}); drop it")
