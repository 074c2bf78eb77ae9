"""train.py: the one entry point of z2all.

    [torchrun --nproc_per_node=N] python train.py [CONFIG.py] [--key=value ...]

With no arguments it trains the tiny default recipe (configs/default.py) on the demo corpus, which is
built on first use. ``main(argv)`` is importable; nothing runs at import time. The run:

1. Build the config tree (configurator.py) and the DistContext (torchrun's variables, read once).
2. Prepare the data (the demo corpus when no --data_dir) and the tokenizer; write exp_config.py.
3. Build the model, wrap it in our DDP, build the optimizer; load a checkpoint on --resume/--init_from.
4. Run the task's loop (pretrain; sft and dpo register in TASKS when they land): micro-batches with
   gradient accumulation, one optimizer step per iteration, logging, evaluation and checkpoints.
5. Save the last checkpoint, plot the losses and print a generated sample.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch

import configurator
from configurator import ExperimentConfig
from dataset.pretrain import PretrainDataset
from dataset.sampler import ResumableBatchSampler
from model import Z2allForCausalLM
from optimizer import build_optimizer
from optimizer.lr_schedule import get_lr
from parallel.ddp import DistributedDataParallel
from parallel.dist import DistContext, destroy, init_distributed
from utils.checkpoint import (
    CheckpointManager,
    copy_tokenizer,
    get_rng_state,
    load_model_state,
    load_optim_states,
    load_trainer_state,
    resolve_checkpoint,
    set_rng_state,
)
from utils.heartbeat import Heartbeat
from utils.logging import MetricsLogger, print0
from utils.mfu import compute_mfu, device_peak_flops
from utils.plot import plot_metrics

HEARTBEAT_INTERVAL_S = 5.0  # seconds between heartbeat writes (monitor_process.py's --hang_timeout_s is far longer)
# Model fields that define the parameter shapes: a checkpoint only loads into the same values.
SHAPE_KEYS = ("vocab_size", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "intermediate_size",
              "tie_word_embeddings", "attention_bias")


# ---------------------------------------------------------------------------------------------
# setup


def resolve_dtype(cfg: ExperimentConfig, device: torch.device) -> torch.dtype:
    name = cfg.train.dtype
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


@dataclass
class DataPaths:
    data_dir: str
    tokenizer_dir: str | None


def prepare_data(cfg: ExperimentConfig, ctx: DistContext) -> DataPaths:
    """Locate the pretokenized data and its tokenizer; build the demo data when no --data_dir is given."""
    if not cfg.data.data_dir:
        from data_preprocess.demo import ensure_demo_data

        if ctx.is_main:
            ensure_demo_data()  # rank 0 builds; the others wait, then reuse the finished build
        ctx.barrier()
        demo = ensure_demo_data()
        return DataPaths(demo.data_dir, cfg.data.tokenizer_dir or demo.tokenizer_dir)
    data_dir = cfg.data.data_dir
    if not os.path.isdir(data_dir):
        raise ValueError(
            f"--data_dir={data_dir} does not exist; make it with `python -m data_preprocess.pretokenize "
            f"--input=TEXT --tokenizer_dir=TOK --out_dir={data_dir}`, or omit --data_dir to train on the demo corpus"
        )
    tok_dir = cfg.data.tokenizer_dir or os.path.join(data_dir, "tokenizer")
    if cfg.data.tokenizer_dir and not os.path.isdir(tok_dir):
        raise ValueError(f"--tokenizer_dir={tok_dir} does not exist; pass the directory written by tokenizer.train_tokenizer")
    return DataPaths(data_dir, tok_dir if os.path.isdir(tok_dir) else None)


def load_tokenizer(cfg: ExperimentConfig, paths: DataPaths):
    """Load the tokenizer (if any) and take the special ids from it; check it fits the model's vocab."""
    if paths.tokenizer_dir is None:
        return None
    from tokenizer import Z2allTokenizer

    tok = Z2allTokenizer.from_pretrained(paths.tokenizer_dir)
    if tok.model_vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"the tokenizer in {paths.tokenizer_dir} has {tok.vocab_size} tokens (model vocab "
            f"{tok.model_vocab_size}) but --vocab_size={cfg.model.vocab_size}; use --vocab_size={tok.model_vocab_size}"
        )
    cfg.model.bos_token_id, cfg.model.eos_token_id, cfg.model.pad_token_id = tok.bos_id, tok.eos_id, tok.pad_id
    return tok


def check_same_shape(saved: dict, cfg: ExperimentConfig, where: str) -> None:
    clashes = [f"{k}: checkpoint {saved.get(k)!r} vs now {getattr(cfg.model, k)!r}"
               for k in SHAPE_KEYS if k in saved and saved[k] != getattr(cfg.model, k)]
    if clashes:
        raise ValueError(
            f"the model shape differs from the checkpoint {where} ({'; '.join(clashes)}); "
            f"drop the changed --keys, or start a new run with --init_from only for an identical shape"
        )


def build_model(cfg: ExperimentConfig, ctx: DistContext, dtype: torch.dtype) -> Z2allForCausalLM:
    """Create the model with a seeded init (the same on every rank) in the param dtype on the device."""
    torch.manual_seed(cfg.train.seed)
    model = Z2allForCausalLM(cfg.model)
    return model.to(device=ctx.device, dtype=dtype)


def load_initial_weights(cfg: ExperimentConfig, model: torch.nn.Module, ckpt_dir) -> None:
    import json

    config_path = os.path.join(ckpt_dir, "config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            check_same_shape(json.load(f), cfg, str(ckpt_dir))
    state = load_model_state(ckpt_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied_head = cfg.model.tie_word_embeddings and missing == ["lm_head.weight"]
    if unexpected or (missing and not tied_head):
        raise ValueError(f"checkpoint {ckpt_dir} does not match the model: missing {missing}, unexpected {unexpected}")


# ---------------------------------------------------------------------------------------------
# data iteration


@dataclass
class BatchStream:
    """Micro-batches for this rank, from a resumable sampler over a dataset."""

    dataset: PretrainDataset
    sampler: ResumableBatchSampler
    device: torch.device
    _it: object = field(default=None, repr=False)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._it = iter(self.sampler)
        return collate(self.dataset, next(self._it), self.device)


def collate(dataset, indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the (x, y) windows at `indices` into a batch on `device` (through pinned memory on CUDA)."""
    xs, ys = zip(*(dataset[i] for i in indices))
    x, y = torch.stack(xs), torch.stack(ys)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


def build_pretrain_data(cfg: ExperimentConfig, ctx: DistContext, paths: DataPaths):
    """Train and valid datasets (rank 0 builds or refreshes the sample index first) and the train stream."""
    seq = cfg.model.max_seq_len

    def make(split: str) -> PretrainDataset:
        return PretrainDataset(paths.data_dir, seq, cfg.model.vocab_size, split=split, valid_ratio=cfg.data.valid_ratio,
                               valid_data_dir=cfg.data.valid_data_dir, data_format=cfg.data.data_format)

    if ctx.is_main:
        make("train")
    ctx.barrier()
    train_ds = make("train")
    valid_ds = make("valid") if cfg.train.eval_interval > 0 and cfg.train.eval_iters > 0 else None
    sampler = ResumableBatchSampler(len(train_ds), cfg.train.batch_size, ctx.rank, ctx.world_size, cfg.data.data_seed)
    return train_ds, valid_ds, BatchStream(train_ds, sampler, ctx.device)


# ---------------------------------------------------------------------------------------------
# the trainer


class PretrainTrainer:
    """Runs the optimizer steps of one run (see the module docstring, step 4)."""

    def __init__(self, cfg, ctx, model, ddp, optimizer, stream, valid_ds, ckpt, logger, tokenizer, dtype):
        self.cfg, self.ctx, self.model, self.ddp, self.optimizer = cfg, ctx, model, ddp, optimizer
        self.stream, self.valid_ds, self.ckpt, self.logger, self.tokenizer = stream, valid_ds, ckpt, logger, tokenizer
        self.dtype = dtype
        t = cfg.train
        self.ga_local = t.gradient_accumulation_steps // ctx.world_size
        self.tokens_per_iter = t.batch_size * cfg.model.max_seq_len * t.gradient_accumulation_steps
        self.iter = 0
        # Absolute micro-batches of the global data stream consumed by the run (all ranks, from its first step,
        # carried through every checkpoint): the one source of the data position.
        self.consumed_micro_batches = 0
        self.best_val_loss = math.inf
        self.last_val_loss = math.inf
        self.peak_flops = device_peak_flops(ctx.device, t.peak_tflops)
        self.flops_per_token = model.flops_per_token(cfg.model.max_seq_len)
        # At most one heartbeat file write every few seconds: the monitor's hang timeout is minutes, and a
        # write-and-rename per step would put file I/O on the hot path of fast steps.
        self.heartbeat = (Heartbeat(os.path.join(t.out_dir, "heartbeat.json"), min_interval_s=HEARTBEAT_INTERVAL_S)
                          if ctx.is_main else None)

    # -- state ------------------------------------------------------------------------------

    def trainer_state(self) -> dict:
        rng = get_rng_state()
        if self.ctx.world_size > 1:
            all_rng = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(all_rng, rng, group=self.ctx.group)
        else:
            all_rng = [rng]
        return {
            "iter": self.iter,
            "consumed_micro_batches": self.consumed_micro_batches,
            "sampler": self.stream.sampler.state_at(self.consumed_micro_batches),
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "world_size": self.ctx.world_size,
            "rng": all_rng,
        }

    def load_trainer_state(self, state: dict) -> None:
        self.iter = state["iter"]
        self.best_val_loss = state["best_val_loss"] if state["best_val_loss"] is not None else math.inf
        self.consumed_micro_batches = int(state["consumed_micro_batches"])
        self.stream.sampler.load_state_dict(self.stream.sampler.state_at(self.consumed_micro_batches))
        rngs = state["rng"]
        if state["world_size"] == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank])
        else:
            # A different world size cannot replay per-rank dropout streams; reseed deterministically.
            print0(f"note: resuming on {self.ctx.world_size} ranks from {state['world_size']}; RNG streams are reseeded",
                   rank=self.ctx.rank)
            torch.manual_seed(self.cfg.train.seed + self.iter * 1000 + self.ctx.rank)

    def save(self) -> None:
        # With overlap_param_gather the last step's all-gather may still be in flight.
        self.ddp.finish_param_sync()
        is_best = self.last_val_loss < self.best_val_loss
        if is_best:
            self.best_val_loss = self.last_val_loss
        self.ckpt.save(
            step=self.iter,
            model_state=self.model.state_dict(),
            optim_state=self.optimizer.state_dict(),
            trainer_state=self.trainer_state(),
            extra_json={"config.json": self.cfg.model.to_dict()},
            is_best=is_best,
        )
        if self.ctx.is_main:
            metrics = os.path.join(self.cfg.train.out_dir, "metrics.jsonl")
            if os.path.isfile(metrics):
                plot_metrics(metrics, os.path.join(self.cfg.train.out_dir, "loss.png"))

    # -- one step ---------------------------------------------------------------------------

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward/backward over this rank's micro-batches, then one optimizer step; returns (loss, grad norm)."""
        self.optimizer.set_lr(get_lr(self.iter, self.cfg.optim, self.cfg.train.max_iters))
        self.ddp.zero_grad_buffer()
        loss_sum = torch.zeros((), device=self.ctx.device, dtype=torch.float32)
        for micro in range(self.ga_local):
            x, y = next(self.stream)
            last = micro == self.ga_local - 1
            # Only the last micro-batch launches the gradient reduction; the others accumulate locally.
            with contextlib.nullcontext() if last else self.ddp.no_sync():
                loss = self.ddp(x, targets=y).loss / self.ga_local
                self.optimizer.scale_loss(loss).backward()
            loss_sum += loss.detach().float()
        self.ddp.finish_grad_sync()
        _, grad_norm = self.optimizer.step()
        self.iter += 1
        self.consumed_micro_batches += self.cfg.train.gradient_accumulation_steps
        return loss_sum, grad_norm

    def mean_over_ranks(self, value: torch.Tensor) -> float:
        if self.ctx.world_size > 1:
            value = value.clone()
            torch.distributed.all_reduce(value, group=self.ctx.group)
            value /= self.ctx.world_size
        return value.item()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over a fixed set of validation windows (rank-strided micro-batches)."""
        self.model.eval()
        n, b, w = len(self.valid_ds), self.cfg.train.batch_size, self.ctx.world_size
        total = torch.zeros((), device=self.ctx.device)
        for k in range(self.cfg.train.eval_iters):
            start = ((k * w + self.ctx.rank) * b) % n
            x, y = collate(self.valid_ds, [(start + j) % n for j in range(b)], self.ctx.device)
            total += self.ddp(x, targets=y).loss.float()
        self.model.train()
        return self.mean_over_ranks(total / self.cfg.train.eval_iters)

    # -- the loop ---------------------------------------------------------------------------

    def log(self, loss_sum, grad_norm, dt: float, iters: int) -> None:
        t = self.cfg.train
        tokens_per_s = self.tokens_per_iter * iters / max(dt, 1e-9)
        loss = self.mean_over_ranks(loss_sum)
        mfu = compute_mfu(self.flops_per_token, tokens_per_s / self.ctx.world_size, self.peak_flops)
        rec = {"iter": self.iter, "loss": loss, "lr": self.optimizer_lr(), "grad_norm": float(grad_norm),
               "tokens_per_s": tokens_per_s, "mfu": mfu, "peak_mem_gb": peak_memory_gb(self.ctx.device),
               "ms_per_iter": 1000.0 * dt / iters, "loss_scale": float(self.optimizer.loss_scale)}
        if self.ctx.is_main:
            self.logger.log(rec)
        mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
        print0(f"iter {self.iter}/{t.max_iters} | loss {loss:.4f} | lr {rec['lr']:.2e} | grad_norm {rec['grad_norm']:.3f} | "
               f"{tokens_per_s:,.0f} tok/s | mfu {mfu_text} | mem {rec['peak_mem_gb']:.2f} GB", rank=self.ctx.rank)

    def optimizer_lr(self) -> float:
        return get_lr(self.iter - 1, self.cfg.optim, self.cfg.train.max_iters)

    def train(self) -> None:
        t = self.cfg.train
        t0, iters_since = time.perf_counter(), 0
        while self.iter < t.max_iters:
            loss_sum, grad_norm = self.train_step()
            iters_since += 1
            if self.heartbeat is not None:
                self.heartbeat.beat(self.iter)
            if self.iter % t.log_interval == 0 or self.iter == t.max_iters:
                self.log(loss_sum, grad_norm, time.perf_counter() - t0, iters_since)
                t0, iters_since = time.perf_counter(), 0
            if self.valid_ds is not None and (self.iter % t.eval_interval == 0 or self.iter == t.max_iters):
                self.last_val_loss = self.evaluate()
                if self.ctx.is_main:
                    self.logger.log({"iter": self.iter, "valid_loss": self.last_val_loss})
                print0(f"iter {self.iter} | valid loss {self.last_val_loss:.4f}", rank=self.ctx.rank)
            if self.iter % t.save_interval == 0 or self.iter == t.max_iters:
                self.save()
                t0 = time.perf_counter()  # keep checkpoint time out of tokens/s

    def sample(self) -> None:
        t = self.cfg.train
        if not self.ctx.is_main or self.tokenizer is None or t.sample_tokens <= 0:
            return
        self.model.eval()
        prompt = torch.tensor([self.tokenizer.encode(t.sample_prompt)], device=self.ctx.device)
        torch.manual_seed(t.seed)
        out = self.model.generate(prompt, max_new_tokens=t.sample_tokens, temperature=0.8, top_k=50,
                                  eos_id=self.tokenizer.eos_id)
        text = self.tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
        print(f"--- sample ({t.sample_tokens} tokens) ---\n{text}\n---", flush=True)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


# ---------------------------------------------------------------------------------------------
# entry


def run_pretrain(cfg: ExperimentConfig, ctx: DistContext) -> None:
    t = cfg.train
    paths = prepare_data(cfg, ctx)
    tokenizer = load_tokenizer(cfg, paths)
    dtype = resolve_dtype(cfg, ctx.device)
    ckpt = CheckpointManager(t.out_dir, keep_last_n=t.keep_last_n, rank=ctx.rank, world_size=ctx.world_size,
                             barrier=ctx.barrier)
    resume_dir = find_resume_checkpoint(cfg, ckpt)
    resume_state = load_trainer_state(resume_dir) if resume_dir is not None else None
    if ctx.is_main:
        configurator.save_config(cfg, t.out_dir)
        if tokenizer is not None:
            copy_tokenizer(paths.tokenizer_dir, t.out_dir)
    # Order matters: weights are loaded before the DDP copies them into its buffer and before the
    # optimizer takes its fp32 master copies of them.
    model = build_model(cfg, ctx, dtype)
    if resume_dir is not None or t.init_from:
        load_initial_weights(cfg, model, resume_dir or resolve_checkpoint(t.init_from))
    ddp = DistributedDataParallel(model, cfg.ddp, ctx)
    ddp.broadcast_params()
    optimizer = build_optimizer(cfg.optim, ddp, dtype, ctx)
    if resume_dir is not None:
        optimizer.load_state_dict(load_optim_states(resume_dir))
    if t.compile:
        model.compile()
    _, valid_ds, stream = build_pretrain_data(cfg, ctx, paths)
    # A fresh run starts metrics.jsonl over (resume_iter=0); a resumed one drops what the killed run
    # logged after its last checkpoint.
    logger = MetricsLogger(t.out_dir if ctx.is_main else None, enabled=ctx.is_main, tensorboard=t.tensorboard,
                           resume_iter=resume_state["iter"] if resume_state else 0)
    trainer = PretrainTrainer(cfg, ctx, model, ddp, optimizer, stream, valid_ds, ckpt, logger, tokenizer, dtype)
    if resume_state is not None:
        trainer.load_trainer_state(resume_state)
        print0(f"resumed from {resume_dir} at iter {trainer.iter}", rank=ctx.rank)
    print0(describe_run(cfg, ctx, model, dtype), rank=ctx.rank)
    try:
        trainer.train()
        trainer.sample()
    finally:
        logger.close()


def find_resume_checkpoint(cfg: ExperimentConfig, ckpt: CheckpointManager):
    """The checkpoint to resume from; a fresh run refuses an out_dir that already holds checkpoints."""
    latest = ckpt.latest()
    if not cfg.train.resume:
        if latest is not None:
            raise ValueError(
                f"--out_dir={cfg.train.out_dir} already holds checkpoints ({latest.name}); add --resume to continue "
                f"that run, or choose a new --out_dir"
            )
        return None
    if latest is None:
        raise ValueError(
            f"--resume: no complete checkpoint under {cfg.train.out_dir}/ckpt; start the run without --resume"
        )
    return latest


def describe_run(cfg: ExperimentConfig, ctx: DistContext, model, dtype) -> str:
    t = cfg.train
    return (f"z2all {t.task_type}: {model.num_params(non_embedding=False) / 1e6:.2f}M params, {dtype}, "
            f"device {ctx.device}, world {ctx.world_size}, micro-batch {t.batch_size} x seq {cfg.model.max_seq_len}, "
            f"grad accum {t.gradient_accumulation_steps} (global), out_dir {t.out_dir}")


TASKS = {"pretrain": run_pretrain}  # sft and dpo register their runners here


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ctx = None
    try:
        cfg = configurator.build_config(argv)
        ctx = init_distributed(cfg.train.device, timeout_s=cfg.ddp.dist_timeout_s)
        configurator.check_world_size(cfg, ctx.world_size)
        TASKS[cfg.train.task_type](cfg, ctx)
    except (ValueError, TypeError, FileNotFoundError) as e:
        if os.environ.get("Z2ALL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if ctx is not None:
            destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
