"""The contract between the task-free Trainer (tasks/trainer.py) and a task (one file each: pretrain, ...).

A task supplies its data stream, the loss of one micro-batch, its eval and its end-of-run sample. The
trainer owns everything else: the optimizer steps, gradient accumulation, normalisation, logging,
checkpoints, the heartbeat and the data position.

Normalisation (ARCHITECTURE.md, "The training step": the loss of a step is normalised by the tokens of the whole step, all
micro-batches and all ranks), chosen by the task's `normalization`:
- "mean": every micro-batch carries the same number of loss tokens (pretraining windows, DPO pairs). The
  task returns the micro-batch's mean; the trainer divides it by the number of micro-batches of the step
  and the DDP averages over ranks, which is exactly the mean over the step's tokens, with no collective.
- "sum": micro-batches carry different token counts (SFT, packed or not). The task returns the sum over its
  loss tokens and their count; the trainer all-reduces the step's count before the last backward and the
  DDP divides the summed grads by it (its grad scale), so neither accumulation, packing nor world size
  changes the objective.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from dataset.config import DataConfig
from model.config import Z2allConfig
from parallel.dist import DistContext
from tasks.config import FinetuneConfig, TrainConfig
from tokenizer import HFTokenizer, Z2allTokenizer


@dataclass(frozen=True)
class TaskInputs:
    """What every task is built from (the same for each): the config sections a task reads, its located data
    (data_dir and tokenizer_dir resolved by the task's locate_data), and the run's objects."""

    train: TrainConfig
    model: Z2allConfig
    finetune: FinetuneConfig
    data: DataConfig
    ctx: DistContext
    tokenizer: Z2allTokenizer | HFTokenizer | None
    dtype: torch.dtype


@dataclass
class MicroBatchLoss:
    """What a task computes on one micro-batch."""

    loss: torch.Tensor  # fp32 scalar: the mean ("mean" tasks) or the sum ("sum" tasks) over its loss tokens
    num_tokens: torch.Tensor | int | None = None  # loss tokens of the micro-batch ("sum" tasks)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # scalars, averaged over the step and ranks


class DataStream(Protocol):
    """This rank's micro-batches, on the device, from an absolute position of the global stream."""

    def __next__(self): ...

    def seek(self, consumed_micro_batches: int) -> None: ...

    def state_at(self, consumed_micro_batches: int) -> dict: ...

    def check_resume(self, saved_state: dict) -> None:
        """Raise ValueError (one line: why, and the fix) when this stream cannot continue exactly the stream whose
        state_at record `saved_state` is; train.py calls it before anything is written."""

    def metrics_at(self, consumed_micro_batches: int) -> dict[str, float]:
        """Data metrics for the log line after `consumed_micro_batches` (cumulative; {} when there are none)."""


class Task(Protocol):
    """One way of training the model (see the module docstring)."""

    name: str
    normalization: str  # "mean" | "sum"
    shown_metrics: tuple[str, ...]  # of its metrics, those the terminal's log line shows besides the loss
    stream: DataStream
    seq_len: int  # tokens per row, for the FLOPs per token of MFU

    def loss(self, model: nn.Module, batch) -> MicroBatchLoss:
        """Forward (through `model`, the DDP) and the loss of one micro-batch; the trainer runs backward."""

    def tokens_in(self, batch) -> int:
        """Token positions the model processes for `batch` (host-side, from shapes: no sync), for tokens/s."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics (collective: every rank calls it); "valid_loss" picks ckpt/best. {} when none."""

    def sample(self, model: nn.Module) -> str | None:
        """A short generated text for the end of the run (rank 0 only), or None."""

