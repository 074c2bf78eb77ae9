"""train.py: the one entry point of z2all.

    [torchrun --nproc_per_node=N] python train.py [CONFIG.py] [--key=value ...]

With no arguments it trains the tiny default recipe (configs/default.py) on the demo corpus, which is
built on first use. ``main(argv)`` is importable; nothing runs at import time. The run:

1. Build the config tree (configurator.py) and the DistContext (torchrun's variables, read once).
2. Locate the task's data (the demo corpus when no --data_dir) and the tokenizer; find the checkpoint to
   resume.
3. Build the model, load weights on --resume/--init_from, wrap it in our DDP, build the optimizer and load
   its state on --resume; build the task (tasks/: pretrain, ...).
4. Only now, with every check passed, write the run dir (exp_config.json, tokenizer/, metrics.jsonl) and run
   the Trainer (tasks/trainer.py): optimizer steps, logging, evaluation and checkpoints; then the task's sample.
With --dry_run it stops after step 1: it locates the data and prints its plan (tasks/pretrain_mix.py).
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import configurator
from configurator import ExperimentConfig
from model import Z2allForCausalLM
from model.weights import load_pretrained_into
from optimizer import build_optimizer
from optimizer.mixed_precision import MixedPrecisionOptimizer
from optimizer.lr_schedule import get_lr
from parallel.ddp import DistributedDataParallel
from parallel.dist import DistContext, destroy, init_distributed
from tasks import TASKS, lifecycle
from tasks.base import Task, TaskInputs
from tasks.faults import Fault, FaultInjectingTask
from tasks.lifecycle import StopSignal
from tasks.setup import (check_attention_impl, check_fp8_support, check_memory, describe_run, find_resume_checkpoint,
                         load_tokenizer, resolve_dtype)
from tasks.trainer import Trainer
from tokenizer import HFTokenizer, Z2allTokenizer
from utils.cli import debug_enabled
from utils.exit_codes import CRASH, USER_ERROR
from utils.checkpoint import (CheckpointManager, copy_tokenizer, load_optim_states, load_rank_state,
                              load_trainer_state)
from utils.disk_faults import writing
from utils.fileio import check_writable
from utils.logging import MetricsLogger, print0
from utils.run_layout import EXIT_STATUS_RESERVE_NAME
from utils.run_status import reserve_space


def _turn_end_id(tokenizer: Z2allTokenizer | HFTokenizer) -> int:
    """The end-of-turn id of the tokenizer's chat format, -1 for a tokenizer without one (pretraining needs none;
    SFT and DPO refuse it where they render their data)."""
    try:
        return tokenizer.chat.turn_end_id
    except ValueError:
        return -1


def build_model(cfg: ExperimentConfig, ctx: DistContext, dtype: torch.dtype, resume_dir,
                tokenizer: Z2allTokenizer | HFTokenizer | None) -> Z2allForCausalLM:
    """The model with a seeded init (the same on every rank) in the param dtype on the device, then the weights
    of the resumed checkpoint or of --init_from (a run, or a Hugging Face model dir). Its config is the run's model
    section with the tokenizer's special ids and end-of-turn id (recorded for generation and the HF export).

    Order matters: weights are loaded before the DDP copies them into its buffer and before the optimizer takes
    its fp32 main copies of them.
    """
    model_cfg = cfg.model
    if tokenizer is not None:
        model_cfg = model_cfg.with_special_ids(tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
                                               _turn_end_id(tokenizer))
    torch.manual_seed(cfg.train.seed)
    model = Z2allForCausalLM(model_cfg).to(device=ctx.device, dtype=dtype)
    if resume_dir is not None:
        load_pretrained_into(model, resume_dir, fix="drop the changed --keys: a resumed run keeps its shape")
    elif cfg.train.init_from:
        loaded = load_pretrained_into(model, cfg.train.init_from,
                                      fix="set {keys} to match it (with data tokenized for that vocabulary), or "
                                          "start from scratch without --init_from")
        print0(f"initialized from {loaded}: {model.num_params(non_embedding=False) / 1e6:.2f}M params "
               f"(the weights only: a new run, new optimizer state and data position)", rank=ctx.rank)
    return model


@dataclass
class Run:
    """Everything a run needs, built and checked before anything is written into its out_dir."""

    model: Z2allForCausalLM
    ddp: DistributedDataParallel
    optimizer: MixedPrecisionOptimizer
    task: Task
    ckpt: CheckpointManager
    tokenizer: Z2allTokenizer | HFTokenizer | None
    resume_dir: Path | None
    resume_state: dict | None


def build_run(cfg: ExperimentConfig, ctx: DistContext) -> Run:
    """Steps 2-3 of the module docstring; writes nothing into out_dir (the data's sample index may be built)."""
    t = cfg.train
    check_writable(t.out_dir)
    dtype = resolve_dtype(t.dtype, ctx.device)
    check_attention_impl(cfg.model, ctx.device)
    check_fp8_support(cfg.model, ctx.device, dtype)
    if t.memory_check:
        check_memory(cfg, ctx, dtype)
    spec = TASKS[t.task_type]
    data = spec.locate_data(cfg, ctx)
    tokenizer = load_tokenizer(cfg, data.tokenizer_dir)
    ckpt = CheckpointManager(t.out_dir, keep_last_n=t.keep_last_n, rank=ctx.rank, world_size=ctx.world_size,
                             agree=ctx.max_over_ranks)
    resume_dir = find_resume_checkpoint(cfg, ckpt)
    resume_state = load_trainer_state(resume_dir) if resume_dir is not None else None
    model = build_model(cfg, ctx, dtype, resume_dir, tokenizer)
    ddp = DistributedDataParallel(model, cfg.ddp, ctx)
    ddp.broadcast_params()
    optimizer = build_optimizer(cfg.optim, ddp, dtype, ctx)
    ddp.register_post_reduce(optimizer.post_reduce_callback)  # grad norms (or the step) per reduced bucket
    if resume_dir is not None:
        optimizer.load_state_dict(load_optim_states(resume_dir))
        hook_state = load_rank_state(resume_dir, ctx.rank)
        if hook_state is not None:  # absent: saved by fewer ranks; the hook starts fresh (PowerSGD says so)
            ddp.comm_hook.state.load_state_dict(hook_state)
    if t.compile:
        model.compile()
    task = spec.build(TaskInputs(t, cfg.model, cfg.finetune, data, ctx, tokenizer, dtype))
    if resume_state is not None:  # e.g. a mix whose current stage changed: refused before anything is written
        task.stream.check_resume(resume_state["sampler"])
    if t.fault_injection and not t.resume:  # tests only: the seam that keeps fault branches out of the step
        task = FaultInjectingTask(task, Fault.parse(t.fault_injection), t.gradient_accumulation_steps // ctx.world_size,
                                  ctx.rank, cfg.model.vocab_size)
    print0(describe_run(cfg, ctx, model, dtype), rank=ctx.rank)
    return Run(model, ddp, optimizer, task, ckpt, tokenizer, resume_dir, resume_state)


def start_run(cfg: ExperimentConfig, ctx: DistContext, r: Run,
              stop_requested: Callable[[], bool] = lambda: False) -> Trainer:
    """Every check has passed: write the run dir (config, tokenizer, metrics.jsonl) and make the Trainer."""
    t = cfg.train
    if ctx.is_main:  # a disk fault in any of these is a DiskFault: one line, exit 2 (nothing to save yet)
        r.ckpt.remove_stale_tmp()
        configurator.save_config(cfg, t.out_dir)
        if r.tokenizer is not None:
            # saved afresh, not copied: a z2all tokenizer/ carries today's chat template (BOS first, as trained); a
            # Hugging Face tokenizer writes the files it was read from, its own template included
            with tempfile.TemporaryDirectory() as tmp:
                r.tokenizer.save_pretrained(tmp)
                copy_tokenizer(tmp, t.out_dir)
        with writing("the space kept for exit_status.json", os.path.join(t.out_dir, EXIT_STATUS_RESERVE_NAME)):
            reserve_space(t.out_dir)
    # A fresh run starts metrics.jsonl over (resume_iter=0); a resumed one drops what the killed run
    # logged after its last checkpoint.
    logger = MetricsLogger(t.out_dir if ctx.is_main else None, enabled=ctx.is_main, tensorboard=t.tensorboard,
                           resume_iter=r.resume_state["iter"] if r.resume_state else 0)
    trainer = Trainer(t, ctx, r.model, r.ddp, r.optimizer, r.task, lambda it: get_lr(it, cfg.optim, t.max_iters),
                      r.ckpt, logger, stop_requested)
    if r.resume_state is not None:
        trainer.load_trainer_state(r.resume_state)
        print0(f"resumed from {r.resume_dir} at iter {trainer.iter}", rank=ctx.rank)
    return trainer


def dry_run(cfg: ExperimentConfig, ctx: DistContext) -> None:
    """--dry_run: print the data plan (tasks/pretrain_mix.py) and return; nothing is trained or written in out_dir."""
    from tasks.pretrain_mix import plan_run

    print0(plan_run(cfg, ctx), rank=ctx.rank)


def run(cfg: ExperimentConfig, ctx: DistContext, stop: StopSignal) -> Trainer | None:
    if cfg.train.dry_run:
        dry_run(cfg, ctx)
        return None
    trainer = start_run(cfg, ctx, build_run(cfg, ctx), stop.requested)
    stop.arm(trainer)
    try:
        if trainer.iter >= cfg.train.max_iters:
            print0(f"nothing to train: {cfg.train.out_dir} is at iter {trainer.iter}, its --max_iters; resume with "
                   f"--max_iters={2 * cfg.train.max_iters} (or more) to train further", rank=ctx.rank)
            return trainer
        trainer.train()
        trainer.sample()
        trainer.summary()
    finally:
        trainer.logger.close()
    return trainer


def _one_line_warning(rank: int):
    """A warning is one line on stderr, like an error (the code line Python adds is for developers: Z2ALL_DEBUG
    keeps it); ranks other than 0 name themselves."""
    def show(message, category, filename, lineno, file=None, line=None):
        if debug_enabled():
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
            return
        who = "warning" if rank == 0 else f"warning (rank {rank})"
        text = " ".join(str(message).split())
        print(f"{who}: {text}" if category in (UserWarning, RuntimeWarning) else f"{who}: {category.__name__}: {text}",
              file=sys.stderr, flush=True)
    return show


def main(argv: list[str] | None = None) -> int:
    """Run, then exit with the code of utils/exit_codes.py, recorded in <out_dir>/exit_status.json (rank 0)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(configurator.help_text(), end="")
        return 0
    rank = int(os.environ["RANK"]) if os.environ.get("RANK", "").isdigit() else 0  # one error line, from rank 0
    stop, cfg, ctx, error = StopSignal(rank), None, None, None
    show_warning, warnings.showwarning = warnings.showwarning, _one_line_warning(rank)
    try:
        cfg = configurator.build_config(argv)
        ctx = init_distributed(cfg.train.device, timeout_s=cfg.ddp.dist_timeout_s)
        configurator.check_world_size(cfg, ctx.world_size)
        run(cfg, ctx, stop)
    except (Exception, KeyboardInterrupt) as e:  # every ending gets its code and its record; a crash its traceback
        error = e
    finally:
        iteration = stop.release_trainer()
        # the run (and a traceback's locals) holds the process group: let it go, so that destroy() frees the group
        # and its threads end before the interpreter does (parallel/dist.py, destroy)
        ctx = None
        lifecycle.release_frames(error)
        if not destroy():
            print(f"warning: rank {rank}: the process group is still referenced after the run; its threads may "
                  f"abort the exit (SIGABRT)", file=sys.stderr, flush=True)
        stop.restore()
        warnings.showwarning = show_warning
    code, reason, spike = lifecycle.outcome(error, iteration)
    out_dir = cfg.train.out_dir if cfg is not None else lifecycle.argv_out_dir(argv)
    if not (cfg is not None and cfg.train.dry_run):  # a dry run leaves out_dir as it was
        lifecycle.record(out_dir, rank, code, reason, iteration, spike,
                         under_torchrun="TORCHELASTIC_RUN_ID" in os.environ)
    if code == CRASH or (code == USER_ERROR and debug_enabled()):
        raise error
    lifecycle.report(code, reason, rank)
    return code


if __name__ == "__main__":
    sys.exit(main())
