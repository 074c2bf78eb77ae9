"""Tasks of the one Trainer: each file in tasks/ is one way of training (see tasks/base.py for the contract).

`TASKS[name]` gives the task's `locate_data(cfg, ctx)` (where its data and tokenizer are, built on first use
where needed) and its `build(cfg, ctx, tokenizer, data, dtype)` (the task object the Trainer runs). Pretraining
on a mix (--data_mix) is pretrain_mix.py's locate_mix and MixPretrainTask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tasks import dpo, finetune, pretrain, pretrain_mix, sft


@dataclass(frozen=True)
class TaskSpec:
    locate_data: Callable  # (ExperimentConfig, DistContext) -> DataConfig with data_dir/tokenizer_dir resolved
    build: Callable  # (ExperimentConfig, DistContext, tokenizer, DataConfig, param dtype) -> Task


TASKS = {
    "pretrain": TaskSpec(
        lambda cfg, ctx: (pretrain_mix.locate_mix if cfg.data.data_mix else pretrain.locate_data)(cfg.data, ctx),
        lambda cfg, ctx, tok, data, dtype: (pretrain_mix.MixPretrainTask if data.data_mix else pretrain.PretrainTask)(
            cfg.train, data, cfg.model.max_seq_len, cfg.model.vocab_size, ctx, tok)),
    "sft": TaskSpec(lambda cfg, ctx: finetune.locate_data(cfg, ctx, "sft"),
                    lambda cfg, ctx, tok, data, dtype: sft.SFTTask(cfg, ctx, tok, data)),
    "dpo": TaskSpec(lambda cfg, ctx: finetune.locate_data(cfg, ctx, "dpo"),
                    lambda cfg, ctx, tok, data, dtype: dpo.DPOTask(cfg, ctx, tok, data, dtype)),
}
