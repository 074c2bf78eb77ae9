"""Tasks of the one Trainer: each file in tasks/ is one way of training (see tasks/base.py for the contract).

`TASKS[name]` gives the task's `locate_data(cfg, ctx)` (where its data and tokenizer are, built on first use
where needed) and its class, which every task builds from the same `TaskInputs` (tasks/base.py). Pretraining
on a mix (--data_mix) is pretrain_mix.py's locate_mix and MixPretrainTask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tasks import dpo, finetune, pretrain, pretrain_mix, sft
from tasks.base import Task, TaskInputs


@dataclass(frozen=True)
class TaskSpec:
    locate_data: Callable  # (ExperimentConfig, DistContext) -> DataConfig with data_dir/tokenizer_dir resolved
    build: Callable[[TaskInputs], Task]


TASKS = {
    "pretrain": TaskSpec(
        lambda cfg, ctx: (pretrain_mix.locate_mix(cfg.data, ctx) if cfg.data.data_mix
                          else pretrain.locate_data(cfg.data, ctx, cfg.train.init_from)),
        lambda inputs: (pretrain_mix.MixPretrainTask if inputs.data.data_mix else pretrain.PretrainTask)(inputs)),
    "sft": TaskSpec(lambda cfg, ctx: finetune.locate_data(cfg, ctx, "sft"), sft.SFTTask),
    "dpo": TaskSpec(lambda cfg, ctx: finetune.locate_data(cfg, ctx, "dpo"), dpo.DPOTask),
}
