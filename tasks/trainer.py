"""The Trainer: the optimizer steps of a run, for any task (tasks/base.py has the contract).

One iteration (`train_step`):
1. Set the LR of this step and zero the DDP's grad buffer.
2. For each of this rank's micro-batches (gradient_accumulation_steps / world): the task's forward and
   loss, normalised (tasks/base.py), then backward. All but the last run under ddp.no_sync(), so only the
   last one launches the bucket reductions, which overlap its backward.
3. finish_grad_sync(), the optimizer step (clipping, AdamW, ZeRO-1 gather), and the data position moves on
   by the step's micro-batches.
Around it `train` logs, evaluates, saves and beats the heartbeat; `sample` prints the task's sample.

The data position is the absolute number of micro-batches of the global stream consumed since the run's first
step. It is saved in every checkpoint and restored from it, never counted from where a process started, so a
run resumed any number of times reads exactly the data of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Callable

import torch
import torch.distributed as dist

from model import Z2allForCausalLM
from optimizer.mixed_precision import MixedPrecisionOptimizer
from parallel.ddp import DistributedDataParallel
from parallel.dist import DistContext
from tasks.base import Task
from tasks.config import TrainConfig
from tasks.guards import NonFiniteGuard, RunStop, SpikeDetector, weights_finite
from utils.checkpoint import CheckpointManager, get_rng_state, set_rng_state
from utils.exit_codes import NAN, PREEMPTED
from utils.heartbeat import CHECKPOINT, EVAL, STARTUP, STEP, Heartbeat
from utils.logging import MetricsLogger, print0
from utils.mfu import compute_mfu, device_peak_flops
from utils.plot import plot_metrics
from utils.run_layout import HEARTBEAT_NAME, METRICS_NAME, PLOT_NAME, step_dir_name

HEARTBEAT_INTERVAL_S = 5.0  # seconds between heartbeat writes (monitor_process.py's --hang_timeout_s is far longer)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


class Trainer:
    """Runs the optimizer steps of one run (see the module docstring).

    `ddp` wraps `model`; `lr_at(iter)` is the LR schedule; `ckpt` and `logger` are the run's checkpoint manager
    and metrics logger (the logger writes on rank 0 only); `stop_requested()` says whether this process was asked
    to stop (SIGTERM): the ranks agree after every iteration, save, and raise RunStop(PREEMPTED).
    Fault policy (tasks/guards.py): skipped non-finite steps are counted and stop the run after
    --max_skipped_steps in a row (NAN); a checkpoint is never written from non-finite weights; --spike_rollback
    stops it on a loss spike (SPIKE).
    """

    def __init__(self, cfg: TrainConfig, ctx: DistContext, model: Z2allForCausalLM, ddp: DistributedDataParallel,
                 optimizer: MixedPrecisionOptimizer, task: Task, lr_at: Callable[[int], float],
                 ckpt: CheckpointManager, logger: MetricsLogger, stop_requested: Callable[[], bool] = lambda: False):
        self.cfg, self.ctx, self.model, self.ddp, self.optimizer = cfg, ctx, model, ddp, optimizer
        self.task, self.lr_at, self.ckpt, self.logger = task, lr_at, ckpt, logger
        self.stop_requested = stop_requested
        self.nonfinite = NonFiniteGuard(cfg.max_skipped_steps)
        self.spikes = SpikeDetector(cfg.spike_factor, cfg.spike_patience) if cfg.spike_rollback else None
        self.data_skips: list[list[int]] = []  # [iter, from, to] of every data window skipped on a rollback
        assert cfg.gradient_accumulation_steps % ctx.world_size == 0, "configurator.check_world_size owns this rule"
        self.ga_local = cfg.gradient_accumulation_steps // ctx.world_size
        self.iter = 0
        self.consumed_micro_batches = 0  # absolute, all ranks, from the run's first step (module docstring)
        self.best_val_loss = math.inf
        self.last_val_loss = math.inf
        self.peak_flops = device_peak_flops(ctx.device, cfg.peak_tflops)
        self.flops_per_token = model.flops_per_token(task.seq_len)
        # At most one heartbeat file write every few seconds: the monitor's hang timeout is minutes, and a
        # write-and-rename per step would put file I/O on the hot path of fast steps.
        # The heartbeat, metrics, TensorBoard and the plot are best-effort: a full disk is reported once per output
        # and training goes on; the next checkpoint that cannot be written stops the run (exit 2).
        self.best_effort = logger.best_effort
        self.heartbeat = (Heartbeat(os.path.join(cfg.out_dir, HEARTBEAT_NAME), min_interval_s=HEARTBEAT_INTERVAL_S,
                                    best_effort=self.best_effort) if ctx.is_main else None)
        self.beat(STARTUP)
        self._tokens_since_log = 0
        self._iters_since_log = 0
        self._t0 = self._started = time.perf_counter()  # start of the current log interval, of training
        self._start_iter = 0

    # -- state ------------------------------------------------------------------------------

    def trainer_state(self) -> dict:
        rng = get_rng_state()
        if self.ctx.world_size > 1:
            all_rng = [None] * self.ctx.world_size
            dist.all_gather_object(all_rng, rng, group=self.ctx.group)
        else:
            all_rng = [rng]
        return {
            "iter": self.iter,
            "consumed_micro_batches": self.consumed_micro_batches,
            "sampler": self.task.stream.state_at(self.consumed_micro_batches),
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "world_size": self.ctx.world_size,
            "gradient_accumulation_steps": self.cfg.gradient_accumulation_steps,
            "rng": all_rng,
            "skipped_steps": self.nonfinite.total,
            "data_skips": self.data_skips,
            "spikes": self.spikes.state_dict() if self.spikes is not None else None,
        }

    def load_trainer_state(self, state: dict) -> None:
        self.iter = state["iter"]
        self.best_val_loss = state["best_val_loss"] if state["best_val_loss"] is not None else math.inf
        self.consumed_micro_batches = int(state["consumed_micro_batches"])
        self.nonfinite.total = int(state.get("skipped_steps", 0))
        self.data_skips = [list(s) for s in state.get("data_skips", [])]
        if self.spikes is not None and state.get("spikes"):
            self.spikes.load_state_dict(state["spikes"])
        if self.cfg.skip_data_to > self.consumed_micro_batches:
            # a loss-spike rollback: the data of the spike window is skipped, and the skip is recorded
            print0(f"skipping the data of micro-batches [{self.consumed_micro_batches}, {self.cfg.skip_data_to}) "
                   f"(--skip_data_to)", rank=self.ctx.rank)
            self.data_skips.append([self.iter, self.consumed_micro_batches, self.cfg.skip_data_to])
            self.consumed_micro_batches = self.cfg.skip_data_to
        self.task.stream.seek(self.consumed_micro_batches)
        print0(self._data_position_note(state), rank=self.ctx.rank)
        if state["world_size"] == self.ctx.world_size:
            set_rng_state(state["rng"][self.ctx.rank])
        else:
            # A different world size cannot replay per-rank dropout streams; reseed deterministically.
            print0(f"note: resuming on {self.ctx.world_size} ranks from {state['world_size']}; RNG streams are reseeded",
                   rank=self.ctx.rank)
            torch.manual_seed(self.cfg.seed + self.iter * 1000 + self.ctx.rank)

    def _data_position_note(self, state: dict) -> str:
        """What a resume does to the data: the position is one global stream of micro-batches, so another world size
        or accumulation continues it without repeating or skipping a sample (configurator refuses a batch size
        or sequence length that would change what a micro-batch is)."""
        world, ga = self.ctx.world_size, self.cfg.gradient_accumulation_steps
        was_world, was_ga = state["world_size"], state.get("gradient_accumulation_steps", ga)
        change = "" if (world, ga) == (was_world, was_ga) else \
            f" (was {was_world} rank(s) x {was_ga // was_world} per step)"
        return (f"data: continuing at micro-batch {self.consumed_micro_batches} of the global stream "
                f"({self.cfg.batch_size} samples each); {world} rank(s) x {self.ga_local} micro-batches per step"
                f"{change}: no sample is repeated or skipped")

    def beat(self, section: str) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat(self.iter, section=section)

    def save(self) -> None:
        # With overlap_param_gather the last step's all-gather may still be in flight.
        self.ddp.finish_param_sync()
        if not weights_finite(self.ddp, self.ctx):
            raise RunStop(NAN, f"the weights are non-finite at iter {self.iter}: no checkpoint is written from them, "
                               f"the last finite one is kept; lower --learning_rate or turn on --grad_clip, then "
                               f"--resume")
        self.beat(CHECKPOINT)
        t0 = time.perf_counter()
        is_best = self.last_val_loss < self.best_val_loss
        if is_best:
            self.best_val_loss = self.last_val_loss
        self.ckpt.save(
            step=self.iter,
            model_state=self.model.state_dict(),
            optim_state=self.optimizer.state_dict(),
            trainer_state=self.trainer_state(),
            extra_json={"config.json": self.model.config.to_dict()},
            is_best=is_best,
            rank_state=self.ddp.comm_hook.state.state_dict(),  # per rank: PowerSGD's error feedback is this rank's
        )
        if self.ctx.is_main:
            metrics, png = os.path.join(self.cfg.out_dir, METRICS_NAME), os.path.join(self.cfg.out_dir, PLOT_NAME)
            if os.path.isfile(metrics):
                with self.best_effort("the loss plot", png):
                    plot_metrics(metrics, png)
        print0(f"saved checkpoint step {self.iter} to {self.ckpt.ckpt_root} in {time.perf_counter() - t0:.1f}s"
               f"{' (the best valid loss so far: also ckpt/best)' if is_best else ''}", rank=self.ctx.rank)
        self.beat(STEP)

    # -- one step ---------------------------------------------------------------------------

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], bool]:
        """Forward/backward over this rank's micro-batches, then one optimizer step.

        Returns (this rank's share of the step loss, the grad norm, the task's metrics summed over micro-batches,
        whether the optimizer stepped: False when it skipped a non-finite step).
        """
        self.optimizer.set_lr(self.lr_at(self.iter))
        self.ddp.zero_grad_buffer()
        loss_sum = torch.zeros((), device=self.ctx.device, dtype=torch.float32)
        tokens = torch.zeros((), device=self.ctx.device, dtype=torch.float32)
        metrics: dict[str, torch.Tensor] = {}
        for micro in range(self.ga_local):
            batch = next(self.task.stream)
            self._tokens_since_log += self.task.tokens_in(batch)
            last = micro == self.ga_local - 1
            # Only the last micro-batch launches the gradient reduction; the others accumulate locally.
            with contextlib.nullcontext() if last else self.ddp.no_sync():
                out = self.task.loss(self.ddp, batch)
                loss = self._normalize(out, tokens, last)
                self.optimizer.scale_loss(loss).backward()
            loss_sum += (loss if self.task.normalization == "mean" else out.loss).detach().float()
            for k, v in out.metrics.items():
                metrics[k] = metrics[k] + v.detach().float() if k in metrics else v.detach().float()
        self.ddp.finish_grad_sync()
        stepped, grad_norm = self.optimizer.step()
        self.iter += 1
        self.consumed_micro_batches += self.cfg.gradient_accumulation_steps
        if self.task.normalization == "sum":
            loss_sum = loss_sum / tokens  # tokens is the whole step's count (all ranks) by now
        return loss_sum, grad_norm, metrics, stepped

    def _normalize(self, out, tokens: torch.Tensor, last: bool) -> torch.Tensor:
        """The micro-batch's loss to back-propagate (tasks/base.py, "Normalisation")."""
        if self.task.normalization == "mean":
            return out.loss / self.ga_local
        tokens += out.num_tokens
        if last:
            # Before the last backward, the only one that reduces: the DDP divides the summed grads by the step's
            # token count of every rank. A step without loss tokens gives zero grads, not NaN.
            if self.ctx.world_size > 1:
                dist.all_reduce(tokens, group=self.ctx.group)
            tokens.clamp_(min=1.0)
            self.ddp.set_grad_scale(1.0 / tokens)
        return out.loss

    def reduce_over_ranks(self, value: torch.Tensor, op: str = "mean") -> float:
        if self.ctx.world_size > 1:
            value = value.clone()
            dist.all_reduce(value, group=self.ctx.group)
            if op == "mean":
                value /= self.ctx.world_size
        return value.item()

    # -- the loop ---------------------------------------------------------------------------

    def log(self, loss_sum, grad_norm, metrics: dict, dt: float, iters: int) -> None:
        tokens_per_s = self._tokens_since_log * self.ctx.world_size / max(dt, 1e-9)
        # "sum" tasks: each rank holds its part of the step loss (already divided by the step's tokens)
        loss = self.reduce_over_ranks(loss_sum, "mean" if self.task.normalization == "mean" else "sum")
        mfu = compute_mfu(self.flops_per_token, tokens_per_s / self.ctx.world_size, self.peak_flops)
        rec = {"iter": self.iter, "loss": loss, "lr": self.lr_at(self.iter - 1), "grad_norm": float(grad_norm),
               "tokens_per_s": tokens_per_s, "mfu": mfu, "peak_mem_gb": peak_memory_gb(self.ctx.device),
               "ms_per_iter": 1000.0 * dt / iters, "loss_scale": float(self.optimizer.loss_scale),
               "skipped_steps": self.nonfinite.total}
        for k, v in metrics.items():
            rec[k] = self.reduce_over_ranks(v / self.ga_local)
        rec.update(self.ddp.comm_hook.state.metrics())  # e.g. PowerSGD's comm_compression_ratio
        rec.update(self.task.stream.metrics_at(self.consumed_micro_batches))  # a mix's tokens/NAME, epoch/NAME
        if self.ctx.is_main:
            self.logger.log(rec)
        mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
        shown = "".join(f" | {k.rsplit('/', 1)[-1]} {rec[k]:.3f}" for k in self.task.shown_metrics if k in rec)
        print0(f"iter {self.iter}/{self.cfg.max_iters} | loss {loss:.4f}{shown} | lr {rec['lr']:.2e} | grad_norm "
               f"{rec['grad_norm']:.3f} | {tokens_per_s:,.0f} tok/s | mfu {mfu_text} | mem {rec['peak_mem_gb']:.2f} GB"
               f" | {self._clock()}", rank=self.ctx.rank)
        self._tokens_since_log = 0

    def _clock(self) -> str:
        """'elapsed 1:02 | eta 3:10': time since this process started training, and the rest at its pace so far."""
        elapsed = time.perf_counter() - self._started
        done = self.iter - self._start_iter
        eta = elapsed / done * (self.cfg.max_iters - self.iter) if done else 0.0
        return f"elapsed {_hms(elapsed)} | eta {_hms(eta)}"

    def evaluate(self) -> None:
        self.beat(EVAL)
        self.model.eval()
        with torch.no_grad():
            metrics = self.task.evaluate(self.ddp)
        self.model.train()
        self.beat(STEP)
        if "valid_loss" not in metrics:
            return
        self.last_val_loss = metrics["valid_loss"]
        if self.ctx.is_main:
            self.logger.log({"iter": self.iter, **metrics})
        parts = "".join(f" | {k[len('valid/'):]} {v:.4f}" for k, v in metrics.items() if k.startswith("valid/"))
        print0(f"iter {self.iter} | valid loss {self.last_val_loss:.4f}{parts}", rank=self.ctx.rank)

    def train(self) -> None:
        self._t0 = self._started = time.perf_counter()
        self._start_iter = self.iter
        while self.iter < self.cfg.max_iters:
            self.iteration()

    def iteration(self) -> None:
        """One iteration of the loop: the step, the heartbeat, and the log, eval and save when they are due."""
        t = self.cfg
        loss_sum, grad_norm, metrics, stepped = self.train_step()
        self._iters_since_log += 1
        note = self.nonfinite.update(stepped, self.optimizer.overflow_recoverable, self.iter)
        if note:
            print0(note, rank=self.ctx.rank)
        if self.spikes is not None:  # one host read of the step loss per step, only with --spike_rollback
            loss = self.reduce_over_ranks(loss_sum, "mean" if self.task.normalization == "mean" else "sum")
            self.spikes.update(self.iter, loss, self.consumed_micro_batches, t.gradient_accumulation_steps)
        self.beat(STEP)
        if self.iter % t.log_interval == 0 or self.iter == t.max_iters:
            self.log(loss_sum, grad_norm, metrics, time.perf_counter() - self._t0, self._iters_since_log)
            self._t0, self._iters_since_log = time.perf_counter(), 0
        if t.eval_interval > 0 and (self.iter % t.eval_interval == 0 or self.iter == t.max_iters):
            t_eval = time.perf_counter()
            self.evaluate()
            self._t0 += time.perf_counter() - t_eval  # keep eval time out of the next log's ms_per_iter and tokens/s
        saved = self.iter % t.save_interval == 0 or self.iter == t.max_iters
        if saved:
            self.save()
            self._t0 = time.perf_counter()  # keep checkpoint time out of tokens/s
        if self._stop_agreed():
            if not saved:
                self.save()
            raise RunStop(PREEMPTED, f"stopped on request (SIGTERM or Ctrl-C) at iter {self.iter}, saved; continue "
                                     f"with: python train.py --resume --out_dir={self.cfg.out_dir}")

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop: a MAX all-reduce, so every rank saves and stops at the same step."""
        local = float(self.stop_requested())
        if self.ctx.world_size == 1:
            return bool(local)
        flag = torch.full((1,), local, device=self.ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.ctx.group)
        return bool(flag.item())

    def summary(self) -> None:
        """Where the run's outputs are and what to do with them (the end of a run)."""
        out, t = self.cfg.out_dir, self.cfg
        lines = [f"done: {t.task_type} to iter {self.iter} in {_hms(time.perf_counter() - self._started)}; outputs in "
                 f"{out}/ ({METRICS_NAME}, {PLOT_NAME}, tb/, ckpt/{step_dir_name(self.iter)}"
                 f"{', ckpt/best' if math.isfinite(self.best_val_loss) else ''})",
                 *_data_lines(self.task.stream.metrics_at(self.consumed_micro_batches)),
                 f"  train further:  python train.py --resume --out_dir={out} --max_iters={2 * t.max_iters}",
                 f"  export to HF:   python -m model.hf.export_hf --ckpt={out} --out_dir={out}/hf",
                 f"  chat with it:   python -m tasks.chat {out}" if t.task_type != "pretrain" else
                 f"  fine-tune it:   python train.py --task_type=sft --init_from={out}"]
        print0("\n".join(lines), rank=self.ctx.rank)

    def sample(self) -> None:
        if not self.ctx.is_main:
            return
        self.beat(EVAL)
        self.model.eval()
        text = self.task.sample(self.model)
        if text is not None:
            print(f"--- sample ({self.cfg.sample_tokens} tokens) ---\n{text}\n---", flush=True)


def _data_lines(metrics: dict[str, float]) -> list[str]:
    """The summary's line of the data read, from the stream's tokens/NAME and epoch/NAME (a mix; none otherwise)."""
    names = [k[len("tokens/"):] for k in metrics if k.startswith("tokens/")]
    if not names:
        return []
    parts = [f"{n} {metrics[f'tokens/{n}']:,.0f} tokens ({metrics.get(f'epoch/{n}', 0.0):.3f} epochs)" for n in names]
    return [f"  data read:      {'; '.join(parts)}"]


def _hms(seconds: float) -> str:
    m, sec = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
