"""Pretraining: next-token prediction on fixed windows of the pretokenized shards (the demo corpus by default).

Batches are (x, y) windows of max_seq_len tokens from the sample-index map, every micro-batch holds
batch_size * max_seq_len loss tokens, so the per-micro-batch mean is normalised by the trainer
("mean" in tasks/base.py). Evaluation is the mean loss over a fixed set of validation windows.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from dataset.config import DataConfig
from dataset.loader import BatchStream, stack_windows
from dataset.pretrain import PretrainDataset
from dataset.sampler import ResumableBatchSampler
from model.hf.import_hf import is_hf_model_dir
from tasks.base import MicroBatchLoss, TaskInputs
from tasks.setup import check_init_tokenizer, model_tokenizer_dir
from utils.fileio import sha256_file


def locate_data(data: DataConfig, ctx, init_from: str = "") -> DataConfig:
    """`data` with data_dir and tokenizer_dir filled in: the demo corpus (built on first use) when no --data_dir.
    The tokenizer: --tokenizer_dir, else the data's (<data_dir>/tokenizer/), else the --init_from model's. A
    Hugging Face model (--init_from=HF_DIR) trains only on data made with its own tokenizer."""
    hf = bool(init_from) and is_hf_model_dir(init_from)
    if not data.data_dir:
        if hf:
            raise ValueError(f"--init_from={init_from} is a Hugging Face model, and the demo corpus is tokenized with "
                             f"z2all's demo tokenizer; pretokenize your text with `python -m data_preprocess."
                             f"pretokenize --input=TEXT --tokenizer_dir={init_from} --out_dir=DATA` and pass --data_dir=DATA")
        from data_preprocess.demo import ensure_demo_data

        if ctx.is_main:
            ensure_demo_data()  # rank 0 builds; the others wait, then reuse the finished build
        ctx.barrier()
        demo = ensure_demo_data()
        return dataclasses.replace(data, data_dir=demo.data_dir, tokenizer_dir=data.tokenizer_dir or demo.tokenizer_dir)
    if os.path.isfile(data.data_dir):
        raise ValueError(f"--data_dir={data.data_dir} is a file; pass the directory that holds the .bin shards: "
                         f"--data_dir={os.path.dirname(os.path.abspath(data.data_dir))}")
    if not os.path.isdir(data.data_dir):
        raise ValueError(
            f"--data_dir={data.data_dir} does not exist; make it with `python -m data_preprocess.pretokenize "
            f"--input=TEXT --tokenizer_dir=TOK --out_dir={data.data_dir}`, or omit --data_dir to train on the demo corpus"
        )
    if data.tokenizer_dir and not os.path.isdir(data.tokenizer_dir):
        raise ValueError(f"--tokenizer_dir={data.tokenizer_dir} does not exist; pass the directory written by "
                         f"tokenizer training")
    own = os.path.join(data.data_dir, "tokenizer")
    tok_dir = data.tokenizer_dir or (own if os.path.isdir(own) else "")
    if hf:
        tok_dir = _check_hf_data(init_from, data.data_dir, tok_dir)
    return dataclasses.replace(data, tokenizer_dir=tok_dir or (model_tokenizer_dir(init_from) if init_from else ""))


def _check_hf_data(init_from: str, data_dir: str, tok_dir: str) -> str:
    """The tokenizer of pretraining data for a Hugging Face model: refused when its vocabulary is not the model's
    (tokenizer.json differs), the model's own when the data has none."""
    model_tok = model_tokenizer_dir(init_from)
    if not tok_dir:
        check_init_tokenizer(init_from)  # neither the data nor the model has one: refused
    elif model_tok:
        mine, theirs = (os.path.join(d, "tokenizer.json") for d in (tok_dir, model_tok))
        if not os.path.isfile(mine) or sha256_file(mine) != sha256_file(theirs):
            raise ValueError(f"--data_dir={data_dir} goes with the tokenizer {tok_dir}, not with the one of "
                             f"--init_from={init_from} (their tokenizer.json differ); pretokenize the text with "
                             f"--tokenizer_dir={init_from}")
    return tok_dir or model_tok


class PretrainTask:
    """See the module docstring. `data` comes from locate_data."""

    name = "pretrain"
    normalization = "mean"
    shown_metrics = ()

    def __init__(self, inputs: TaskInputs):
        train, data, ctx = inputs.train, inputs.data, inputs.ctx
        self.cfg, self.ctx, self.tokenizer = train, ctx, inputs.tokenizer
        self.seq_len = inputs.model.max_seq_len

        def make(split: str) -> PretrainDataset:
            return PretrainDataset(data, self.seq_len, inputs.model.vocab_size, split=split)

        if ctx.is_main:
            make("train")  # rank 0 builds or refreshes the sample index; the others then read it
        ctx.barrier()
        self.train_ds = make("train")
        self.valid_ds = make("valid") if train.eval_interval > 0 and train.eval_iters > 0 else None
        sampler = ResumableBatchSampler(len(self.train_ds), train.batch_size, ctx.rank, ctx.world_size, data.data_seed)
        self.stream = BatchStream.from_config(self.train_ds, sampler, stack_windows, ctx.device, data)

    def loss(self, model, batch) -> MicroBatchLoss:
        x, y = batch
        return MicroBatchLoss(model(x, targets=y).loss)

    def tokens_in(self, batch) -> int:
        return batch[0].numel()

    def evaluate(self, model) -> dict[str, float]:
        """Mean loss over the first eval_iters * batch_size validation windows, split across the ranks: the same
        windows and the same mean for any number of ranks (up to the order of the fp32 sums)."""
        if self.valid_ds is None:
            return {}
        n, b, count = len(self.valid_ds), self.cfg.batch_size, self.cfg.eval_iters * self.cfg.batch_size
        mine = list(range(self.ctx.rank, count, self.ctx.world_size))
        total = torch.zeros((), device=self.ctx.device)
        for s in range(0, len(mine), b):
            x, y = stack_windows([self.valid_ds[j % n] for j in mine[s:s + b]])
            # summed over tokens, divided by the window length: the sum of the windows' mean losses
            total += model(x.to(self.ctx.device), targets=y.to(self.ctx.device), loss_reduction="sum").loss.float() \
                / self.seq_len
        if self.ctx.world_size > 1:
            torch.distributed.all_reduce(total, group=self.ctx.group)
        return {"valid_loss": (total / count).item()}

    def sample(self, model) -> str | None:
        t = self.cfg
        if self.tokenizer is None or t.sample_tokens <= 0:
            return None
        prompt = torch.tensor([self.tokenizer.encode(t.sample_prompt)], device=self.ctx.device)
        torch.manual_seed(t.seed)
        out = model.generate(prompt, max_new_tokens=t.sample_tokens, temperature=0.8, top_k=50,
                             eos_id=self.tokenizer.eos_id)
        return self.tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
