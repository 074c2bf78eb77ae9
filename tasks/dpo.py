"""DPO: the policy (the trained model) learns to prefer the chosen response over the rejected one, against a
frozen reference (tasks/dpo_loss.py has the losses; tasks/finetune.py says where the data comes from).

1. A micro-batch holds batch_size pairs: their chosen rows, then their rejected rows, in one forward.
2. Each row's log-prob is summed over its response tokens (averaged for IPO) from the model's per-position
   losses (loss_reduction="none": no (rows, T, V) logits are kept).
3. The reference gives the same log-probs without grad: a frozen copy of --ref_from (default: the --init_from
   weights), never updated and never saved; or, with --precompute_ref_logps, a table computed once over the
   whole set, stored beside the pretokenized data and reused by later runs, after which the reference model
   is freed.
4. The loss is dpo_loss's mean over the micro-batch's pairs; every micro-batch has batch_size pairs, so the
   trainer's "mean" normalisation is exact. Metrics: rewards/chosen, rewards/rejected, rewards/accuracy,
   rewards/margin, logps/chosen, logps/rejected; evaluation reports them on held-out pairs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset.loader import BatchStream
from dataset.prefetch import move_batch
from dataset.sampler import ResumableBatchSampler
from dataset.sft import DPOBatch, DPODataset, collate_dpo
from model import Z2allConfig, Z2allForCausalLM
from model.weights import weight_files
from tasks import finetune
from tasks.base import MicroBatchLoss, TaskInputs
from tasks.dpo_loss import dpo_loss, sequence_logps
from utils.disk_faults import writing
from utils.fileio import atomic_write_bytes, atomic_write_json, sha256_file

# model fields the reference takes from the policy's config: the same kernels, no dropout
_REF_OPTIONS = ("use_fused_rmsnorm", "use_fused_rope", "use_fused_swiglu", "use_fused_cross_entropy", "attn_impl",
                "sdpa_backend", "cross_entropy_chunk_size", "residual_in_fp32")


@dataclasses.dataclass
class IndexedDPOBatch(DPOBatch):
    pair_ids: torch.Tensor | None = None  # (B,) int64: the pairs' indices, for the precomputed reference table


class _Pairs(Dataset):
    """Pairs `ids` of a DPO dataset as (index, pair) items."""

    def __init__(self, ds: DPODataset, ids: np.ndarray):
        self.ds, self.ids = ds, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        k = int(self.ids[i])
        return k, self.ds.pair(k)


def collate_indexed(items, pad_id: int) -> IndexedDPOBatch:
    b = collate_dpo([p for _, p in items], pad_id)
    return IndexedDPOBatch(**{f.name: getattr(b, f.name) for f in dataclasses.fields(b)},
                           pair_ids=torch.tensor([k for k, _ in items], dtype=torch.int64))


class DPOTask:
    """See the module docstring. `data` comes from finetune.locate_data."""

    name = "dpo"
    normalization = "mean"
    shown_metrics = ("rewards/accuracy", "rewards/margin")

    def __init__(self, inputs: TaskInputs):
        t, self.f, ctx, data = inputs.train, inputs.finetune, inputs.ctx, inputs.data
        self.cfg, self.ctx, self.tokenizer = t, ctx, inputs.tokenizer
        self.seq_len = inputs.model.max_seq_len
        self.average = self.f.dpo_loss_type == "ipo"  # IPO is defined on per-token mean log-probs
        self.ds = DPODataset(finetune.pretokenized(inputs, "dpo"))
        train_ids, self.valid_ids = finetune.split(len(self.ds), data.valid_ratio)
        self.collate = functools.partial(collate_indexed, pad_id=self.ds.pad_id)
        sampler = ResumableBatchSampler(len(train_ids), t.batch_size, ctx.rank, ctx.world_size, data.data_seed)
        self.stream = BatchStream.from_config(_Pairs(self.ds, train_ids), sampler, self.collate, ctx.device, data)
        ref_path = self.f.ref_from or t.init_from
        if not ref_path:
            raise ValueError("--task_type=dpo needs a reference model: pass --init_from=RUN (the policy starts from it "
                             "and it is the reference) or --ref_from=RUN")
        self.ref, self.ref_table = None, None
        if self.f.precompute_ref_logps:
            self.ref_table = self._precomputed_table(ref_path, inputs.model, inputs.dtype)
        else:
            self.ref = self._load_reference(ref_path, inputs.model, inputs.dtype)

    # -- the reference ----------------------------------------------------------------------

    def _load_reference(self, path: str, model_cfg: Z2allConfig, dtype: torch.dtype) -> Z2allForCausalLM:
        overrides = {k: getattr(model_cfg, k) for k in _REF_OPTIONS}
        overrides.update(attention_dropout=0.0, residual_dropout=0.0)
        ref = Z2allForCausalLM.from_pretrained(path, device=self.ctx.device, dtype=dtype, config_overrides=overrides)
        model_cfg.check_same_shape(ref.config, where=f"of the DPO reference {path}",
                                   fix="pass a --ref_from with the policy's shape")
        return ref.eval().requires_grad_(False)

    def _logps(self, model, b) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) log-probs of the batch's pairs under `model` (steps 1-2 of the docstring)."""
        tok = model(b.input_ids, targets=b.targets, position_ids=b.position_ids, loss_reduction="none").loss
        logps = sequence_logps(tok, b.targets, average=self.average)
        return logps[:b.num_pairs], logps[b.num_pairs:]

    def _ref_logps(self, b) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref_table is not None:
            rows = self.ref_table[b.pair_ids.to(self.ref_table.device)]
            return rows[:, 0], rows[:, 1]
        with torch.no_grad():
            return self._logps(self.ref, b)

    def _precomputed_table(self, ref_path: str, model_cfg: Z2allConfig, dtype: torch.dtype) -> torch.Tensor:
        """(pairs, 2) reference log-probs: read from beside the data when they match, else computed with the
        reference model, stored, and the model freed.

        The file name holds a key of the reference weights, the data's manifest and the averaging, so a
        changed reference, data set or loss type never reuses a stale table.
        """
        hashes = [sha256_file(f) for f in weight_files(ref_path)]  # one file, or an HF model's shards
        ref = hashes[0] if len(hashes) == 1 else finetune.key_digest({"shards": hashes})
        key = {"ref_sha256": ref, "data": self.ds.manifest["key"], "average": self.average}
        path = os.path.join(self.ds.data_dir, f"ref_logps-{finetune.key_digest(key)}.npy")
        exists = os.path.isfile(path)
        self.ctx.barrier()  # every rank has looked before rank 0 may write it: all take the same branch
        if not exists:
            self.ref = self._load_reference(ref_path, model_cfg, dtype)
            table = self._compute_table()
            self.ref = None  # freed: the table replaces it
            if self.ctx.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.ctx.device)
            if self.ctx.is_main:
                self._store_table(path, table, key)
            self.ctx.barrier()
        table = np.load(path)
        if table.shape != (len(self.ds), 2):
            raise ValueError(f"{path} holds {table.shape} reference log-probs for {len(self.ds)} pairs; delete it")
        return torch.from_numpy(table).to(self.ctx.device)

    @staticmethod
    def _store_table(path: str, table: np.ndarray, key: dict) -> None:
        """The table beside the data, atomically; its .json (what it was computed from) first, so the .npy, whose
        presence means "computed", is the last write. A failed write (a disk fault: a DiskFault, exit 2) leaves
        neither file nor a temporary one."""
        import io

        buf = io.BytesIO()
        np.save(buf, table)
        info = path[:-4] + ".json"

        def cleanup() -> None:
            if not os.path.isfile(path):
                with contextlib.suppress(OSError):
                    os.unlink(info)

        size_mb = len(buf.getvalue()) / 1e6
        with writing("the precomputed DPO reference log-probs", path, cleanup=cleanup,
                     fix=f"{{action}} (about {size_mb:.1f} MB), or run without --precompute_ref_logps"):
            atomic_write_json(info, {"key": key, "pairs": len(table)})
            atomic_write_bytes(path, buf.getvalue())

    def _compute_table(self) -> np.ndarray:
        """Every pair's reference log-probs, each rank computing every world-th batch, then summed over ranks."""
        from tqdm import tqdm

        n, b = len(self.ds), self.cfg.batch_size
        table = torch.zeros(n, 2, dtype=torch.float32, device=self.ctx.device)
        starts = range(self.ctx.rank * b, n, b * self.ctx.world_size)
        for s in tqdm(starts, desc="reference log-probs", disable=not self.ctx.is_main, unit="batch"):
            items = [(k, self.ds.pair(k)) for k in range(s, min(s + b, n))]
            batch = move_batch(self.collate(items), self.ctx.device)
            with torch.no_grad():
                chosen, rejected = self._logps(self.ref, batch)
            table[batch.pair_ids] = torch.stack([chosen, rejected], dim=1).float()
        return finetune.sum_over_ranks(table, self.ctx).cpu().numpy()

    # -- the task contract --------------------------------------------------------------------

    def _terms(self, model, b) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pc, pr = self._logps(model, b)
        rc, rr = self._ref_logps(b)
        losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=self.f.dpo_beta, loss_type=self.f.dpo_loss_type,
                                            label_smoothing=self.f.dpo_label_smoothing)
        metrics = {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
                   "rewards/accuracy": (chosen > rejected).float().mean(), "rewards/margin": (chosen - rejected).mean(),
                   "logps/chosen": pc.detach().mean(), "logps/rejected": pr.detach().mean()}
        return losses.mean(), metrics

    def loss(self, model, batch) -> MicroBatchLoss:
        loss, metrics = self._terms(model, batch)
        return MicroBatchLoss(loss, metrics=metrics)

    def tokens_in(self, batch) -> int:
        return batch.input_ids.numel()

    def evaluate(self, model) -> dict[str, float]:
        """Loss and reward accuracy over a fixed set of held-out pairs (summed per pair over the ranks)."""
        mine = finetune.eval_indices(self.valid_ids, self.cfg.eval_iters * self.cfg.batch_size, self.ctx)
        sums = torch.zeros(4, device=self.ctx.device, dtype=torch.float32)  # loss, accuracy, margin, pairs
        for s in range(0, len(mine), self.cfg.batch_size):
            ids = mine[s:s + self.cfg.batch_size]
            b = move_batch(self.collate([(int(k), self.ds.pair(int(k))) for k in ids]), self.ctx.device)
            loss, m = self._terms(model, b)
            one = torch.ones((), device=sums.device)
            sums += torch.stack([loss, m["rewards/accuracy"], m["rewards/margin"], one]).to(sums) * len(ids)
        sums = finetune.sum_over_ranks(sums, self.ctx)
        if sums[3] == 0:
            return {}
        loss, acc, margin = (sums[:3] / sums[3]).tolist()
        return {"valid_loss": loss, "valid_rewards/accuracy": acc, "valid_rewards/margin": margin}

    def sample(self, model) -> str | None:
        if self.tokenizer is None or self.cfg.sample_tokens <= 0 or len(self.valid_ids) == 0:
            return None
        pair = self.ds.pair(int(self.valid_ids[0]))
        return finetune.reply_sample(model, self.tokenizer, pair.chosen_ids, pair.chosen_mask, self.cfg.sample_tokens,
                                     self.cfg.seed, self.ctx.device)
