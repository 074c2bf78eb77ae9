"""Set-up steps of a run that train.py wires together: the param dtype, the tokenizer, the checkpoint to resume,
the memory check and the start-up line. Each reads the config and the DistContext; none writes anything."""
from __future__ import annotations

from pathlib import Path

import torch

from model.memory import check_fits, training_bytes
from model.ops import check_fp8, flash_attn_available, flex_attention_available
from utils.checkpoint import CheckpointManager, resolve_checkpoint
from utils.run_layout import step_dir_name
from utils.memory import available_bytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    return DTYPES[name]


def check_attention_impl(model_cfg, device: torch.device) -> None:
    """Refuse, before anything is built, an --attn_impl that this machine cannot run."""
    impl = model_cfg.attn_impl
    if impl == "flash_attn" and not (device.type == "cuda" and flash_attn_available()):
        raise ValueError(f"--attn_impl=flash_attn needs CUDA and the flash_attn package (device {device}, installed: "
                         f"{flash_attn_available()}); pip install flash-attn, or use --attn_impl=auto")
    if impl == "flex" and not (device.type == "cuda" and flex_attention_available()):
        raise ValueError(f"--attn_impl=flex needs CUDA, torch >= 2.5 and Triton (FlexAttention has no CPU backward; "
                         f"device {device}, available: {flex_attention_available()}); use --attn_impl=auto")


def model_tokenizer_dir(path: str) -> str:
    """The tokenizer that belongs to a model path: a Hugging Face model dir's own tokenizer files, <run>/tokenizer/,
    or the tokenizer/ of the run above a step dir (ckpt/step_N, ckpt/best); "" when there is none."""
    from tokenizer import is_tokenizer_dir

    p = Path(path)
    for cand in (p, p / "tokenizer", p.resolve().parent.parent / "tokenizer"):
        if cand.is_dir() and is_tokenizer_dir(cand):
            return str(cand)
    return ""


def check_init_tokenizer(init_from: str) -> None:
    """Refuse to give a Hugging Face model another tokenizer by default: one without its tokenizer files needs
    --tokenizer_dir (the demo tokenizer's ids would mean other tokens to it)."""
    from model.hf.import_hf import is_hf_model_dir

    if init_from and is_hf_model_dir(init_from) and not model_tokenizer_dir(init_from):
        raise ValueError(f"--init_from={init_from} is a Hugging Face model without its tokenizer (no tokenizer.json "
                         f"there); pass --tokenizer_dir=DIR of the tokenizer it was trained with")


def check_fp8_support(model_cfg, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse, before anything is built, an --fp8 recipe that this machine cannot run (one line: what it lacks)."""
    check_fp8(model_cfg.fp8, device, dtype)


def load_tokenizer(cfg, tokenizer_dir: str):
    """Load the tokenizer (if any: a z2all one, or a Hugging Face one) and check that it fits the model's vocab
    (its special ids go to the model that train.build_model makes, never into the config)."""
    if not tokenizer_dir:
        return None
    from tokenizer import load_tokenizer as load

    tok = load(tokenizer_dir)
    if tok.model_vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"the tokenizer in {tokenizer_dir} has {tok.vocab_size} tokens (model vocab "
            f"{tok.model_vocab_size}) but --vocab_size={cfg.model.vocab_size}; use --vocab_size={tok.model_vocab_size}"
        )
    return tok


def find_resume_checkpoint(cfg, ckpt: CheckpointManager):
    """The checkpoint to resume from (--resume_step's, or the newest); a fresh run refuses an out_dir that already
    holds checkpoints."""
    if cfg.train.resume and cfg.train.resume_step >= 0:
        return resolve_checkpoint(ckpt.ckpt_root / step_dir_name(cfg.train.resume_step))
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


def check_memory(cfg, ctx, dtype: torch.dtype) -> None:
    """Refuse, before allocating, a model and micro-batch that cannot fit (model/memory.py's estimate)."""
    p = torch.finfo(dtype).bits // 8
    split = dtype == torch.bfloat16 and ctx.device.type == "cuda" and cfg.optim.main_params != "fp32"
    est = training_bytes(cfg.model, cfg.train.batch_size * cfg.model.max_seq_len, p,
                         4 if cfg.ddp.grad_reduce_in_fp32 else p, 0 if p == 4 else 2 if split else 4,
                         ctx.world_size if cfg.ddp.use_distributed_optimizer else 1)
    check_fits(est, available_bytes(ctx.device), str(ctx.device), f"{cfg.train.batch_size} x {cfg.model.max_seq_len}",
               cfg.shape_source)


def describe_run(cfg, ctx, model, dtype) -> str:
    t = cfg.train
    fp8 = f" with FP8 {cfg.model.fp8} GEMMs" if cfg.model.fp8 != "off" else ""
    return (f"z2all {t.task_type}: {model.num_params(non_embedding=False) / 1e6:.2f}M params, {dtype}{fp8}, "
            f"device {ctx.device}, world {ctx.world_size}, micro-batch {t.batch_size} x seq {cfg.model.max_seq_len}, "
            f"grad accum {t.gradient_accumulation_steps} (global), out_dir {t.out_dir}; model shape from {cfg.shape_source}")
