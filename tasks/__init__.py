"""Tasks of the one Trainer: each file in tasks/ is one way of training (see tasks/base.py for the contract).

`TASKS[name]` gives the task's `locate_data(data, ctx)` (where its data and tokenizer are, built on first use
where needed) and its `build(cfg, ctx, tokenizer, data)` (the task object the Trainer runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tasks import pretrain


@dataclass(frozen=True)
class TaskSpec:
    locate_data: Callable  # (DataConfig, DistContext) -> DataConfig with data_dir/tokenizer_dir resolved
    build: Callable  # (ExperimentConfig, DistContext, tokenizer, DataConfig) -> Task


def _build_pretrain(cfg, ctx, tokenizer, data):
    return pretrain.PretrainTask(cfg.train, data, cfg.model.max_seq_len, cfg.model.vocab_size, ctx, tokenizer)


TASKS = {"pretrain": TaskSpec(pretrain.locate_data, _build_pretrain)}
