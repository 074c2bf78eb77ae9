"""SFT: next-token loss on the assistant turns of conversations (tasks/finetune.py says where the data comes from).

Micro-batches are rows of max_seq_len tokens holding several conversations each (--pack_sequences, the
default: cu_seqlens keep attention inside each conversation and position ids restart at each one), or one
conversation per row padded to the longest of the micro-batch. Either way they carry different numbers of
label tokens, so the task returns sums and the trainer normalises by the label tokens of the whole step
("sum" in tasks/base.py). Evaluation: the summed loss over a fixed set of held-out conversations divided by
their label tokens, the same for any number of ranks. The sample is a reply to a held-out prompt.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.loader import BatchStream
from dataset.prefetch import move_batch
from dataset.sampler import ResumableBatchSampler
from dataset.sft import PackedSFTDataset, SFTDataset, collate_packed, collate_padded
from tasks import finetune
from tasks.base import MicroBatchLoss, TaskInputs


class _Subset(Dataset):
    """Examples `ids` of an SFT dataset, one per item (the unpacked rows)."""

    def __init__(self, ds: SFTDataset, ids: np.ndarray):
        self.ds, self.ids = ds, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return self.ds.example(int(self.ids[i]))


def model_inputs(batch) -> dict:
    """The forward's keyword arguments for an SFT batch (packed or padded)."""
    return dict(targets=batch.targets, position_ids=batch.position_ids, cu_seqlens=batch.cu_seqlens,
                max_seqlen=batch.max_seqlen)


class SFTTask:
    """See the module docstring. `data` comes from finetune.locate_data."""

    name = "sft"
    normalization = "sum"
    shown_metrics = ()

    def __init__(self, inputs: TaskInputs):
        t, ctx, data = inputs.train, inputs.ctx, inputs.data
        self.cfg, self.ctx, self.tokenizer = t, ctx, inputs.tokenizer
        self.seq_len = inputs.model.max_seq_len
        self.ds = SFTDataset(finetune.pretokenized(inputs, "sft"), vocab_size=inputs.model.vocab_size)
        train_ids, self.valid_ids = finetune.split(len(self.ds), data.valid_ratio)
        if inputs.finetune.pack_sequences:
            rows = PackedSFTDataset(self.ds, self.seq_len, seed=data.data_seed, indices=train_ids)
            collate = functools.partial(collate_packed, seq_len=self.seq_len, pad_id=self.ds.pad_id)
        else:
            rows = _Subset(self.ds, train_ids)
            collate = functools.partial(collate_padded, pad_id=self.ds.pad_id)
        sampler = ResumableBatchSampler(len(rows), t.batch_size, ctx.rank, ctx.world_size, data.data_seed)
        self.stream = BatchStream.from_config(rows, sampler, collate, ctx.device, data)

    def loss(self, model, batch) -> MicroBatchLoss:
        out = model(batch.input_ids, loss_reduction="sum", **model_inputs(batch))
        return MicroBatchLoss(out.loss, batch.num_label_tokens)

    def tokens_in(self, batch) -> int:
        return batch.input_ids.numel()

    def evaluate(self, model) -> dict[str, float]:
        mine = finetune.eval_indices(self.valid_ids, self.cfg.eval_iters * self.cfg.batch_size, self.ctx)
        sums = torch.zeros(2, device=self.ctx.device, dtype=torch.float32)  # (loss sum, label tokens)
        for s in range(0, len(mine), self.cfg.batch_size):
            b = collate_padded([self.ds.example(int(i)) for i in mine[s:s + self.cfg.batch_size]], self.ds.pad_id)
            b = move_batch(b, self.ctx.device)
            sums[0] += model(b.input_ids, loss_reduction="sum", **model_inputs(b)).loss.float()
            sums[1] += b.num_label_tokens
        sums = finetune.sum_over_ranks(sums, self.ctx)
        return {"valid_loss": (sums[0] / sums[1]).item()} if sums[1] > 0 else {}

    def sample(self, model) -> str | None:
        if self.tokenizer is None or self.cfg.sample_tokens <= 0 or len(self.valid_ids) == 0:
            return None
        ids, mask = self.ds.example(int(self.valid_ids[0]))
        return finetune.reply_sample(model, self.tokenizer, ids, mask, self.cfg.sample_tokens, self.cfg.seed,
                                     self.ctx.device)
