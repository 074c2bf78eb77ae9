"""What SFT and DPO share: where their data and tokenizer are, the pretokenized set, the held-out split, the
evaluation sums and the end-of-run reply.

Data (--data_dir): a pretokenized set (a dir with the manifest.json of data_preprocess.pretokenize_sft) is used
as it is; raw records (a .jsonl/.json/.parquet file or a dir of them) are pretokenized on first use into the
sibling `<data_dir>.z2all-<task>-<max_seq_len>/`, rebuilt when the records, the tokenizer or the options change;
no --data_dir means the demo set (data/demo/sft, built with the demo corpus).
Tokenizer: --tokenizer_dir, else the run's own on --resume, else the --init_from run's, else the demo one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dataset.config import DataConfig
from dataset.sample_index import split_windows
from dataset.sft import MANIFEST_FILE

DEMO_FILES = {"sft": "sft.jsonl", "dpo": "dpo.jsonl"}


def _run_tokenizer(path: str) -> str:
    """The tokenizer/ of the run that holds `path` (a run dir, a step dir or ckpt/best), or ""."""
    p = Path(path).resolve()
    for cand in (p / "tokenizer", p.parent.parent / "tokenizer"):
        if (cand / "tokenizer_config.json").is_file():
            return str(cand)
    return ""


def locate_data(cfg, ctx, task: str) -> DataConfig:
    """cfg.data with data_dir (raw or pretokenized) and tokenizer_dir resolved (see the module docstring)."""
    data, t = cfg.data, cfg.train
    demo = None
    if not data.data_dir:
        from data_preprocess.demo import ensure_demo_data

        if ctx.is_main:
            ensure_demo_data()
        ctx.barrier()
        demo = ensure_demo_data()
    data_dir = data.data_dir or os.path.join(demo.sft_dir, DEMO_FILES[task])
    if not os.path.exists(data_dir):
        raise ValueError(f"--data_dir={data_dir} does not exist; pass a .jsonl/.json/.parquet file or a dir of them "
                         f"(or a dir made by `python -m data_preprocess.pretokenize_sft --task={task}`)")
    if _is_pretraining_shards(data_dir):
        what = "conversation records" if task == "sft" else "preference pairs ({prompt, chosen, rejected})"
        raise ValueError(f"--data_dir={data_dir} holds pretraining shards (.bin from data_preprocess.pretokenize); "
                         f"--task_type={task} needs {what} in .jsonl/.json/.parquet files, or a dir made by "
                         f"`python -m data_preprocess.pretokenize_sft --task={task}`; omit --data_dir for the demo set")
    candidates = [t.out_dir if t.resume else "", t.init_from, data_dir if is_pretokenized(data_dir) else ""]
    tok = data.tokenizer_dir or next((found for c in candidates if c and (found := _run_tokenizer(c))), "")
    if not tok:
        if demo is None:
            from data_preprocess.demo import ensure_demo_data

            demo = ensure_demo_data()
        tok = demo.tokenizer_dir
    if not os.path.isdir(tok):
        raise ValueError(f"--tokenizer_dir={tok} does not exist; pass the tokenizer of the model you fine-tune")
    return dataclasses.replace(data, data_dir=data_dir, tokenizer_dir=tok)


def key_digest(key: dict) -> str:
    """A short stable name for a staleness key (sorted JSON, sha256)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _is_pretraining_shards(path: str) -> bool:
    """A directory written by data_preprocess.pretokenize (its summary file, or .bin shards and no SFT manifest)."""
    if not os.path.isdir(path) or is_pretokenized(path):
        return False
    from data_preprocess.pretokenize import SUMMARY_FILE

    names = os.listdir(path)
    return SUMMARY_FILE in names or any(n.endswith(".bin") for n in names)


def is_pretokenized(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST_FILE))


def pretokenized(inputs, task: str) -> str:
    """The pretokenized dir of the task's data_dir (TaskInputs), built (rank 0, the others wait) when missing or
    stale."""
    data, ctx, f, seq_len = inputs.data, inputs.ctx, inputs.finetune, inputs.model.max_seq_len
    if is_pretokenized(data.data_dir):
        return data.data_dir
    from data_preprocess.pretokenize_sft import ensure_pretokenized

    out = f"{data.data_dir.rstrip(os.sep)}.z2all-{task}-{seq_len}"
    kw = dict(task=task, max_seq_len=seq_len, format=f.chat_format, max_prompt_len=f.max_prompt_len,
              truncation_mode=f.truncation_mode, skip_bad_records=f.skip_bad_records)
    if ctx.is_main:  # a progress bar on a terminal; a log file gets the start and summary lines only
        ensure_pretokenized(data.data_dir, data.tokenizer_dir, out, num_workers=max(1, data.num_workers),
                            progress=sys.stderr.isatty(), **kw)
    ctx.barrier()
    return ensure_pretokenized(data.data_dir, data.tokenizer_dir, out, progress=False, log=lambda m: None, **kw)


def split(n: int, valid_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) example indices: a fixed seeded split, the same for any world size."""
    if valid_ratio == 0:
        return np.arange(n), np.arange(0)
    return split_windows(n, valid_ratio)


def eval_indices(valid: np.ndarray, count: int, ctx) -> np.ndarray:
    """This rank's share of the first `count` held-out examples: the same set for any number of ranks."""
    return valid[:count][ctx.rank::ctx.world_size]


def sum_over_ranks(values: torch.Tensor, ctx) -> torch.Tensor:
    if ctx.world_size > 1:
        values = values.clone()
        dist.all_reduce(values, group=ctx.group)
    return values


def reply_sample(model, tokenizer, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int, seed: int, device) -> str:
    """The model's reply to a held-out prompt: the example's tokens up to its first trained token, then
    generation until <|im_end|>."""
    first = int(np.argmax(mask != 0)) if mask.any() else len(ids)
    prompt = torch.tensor([ids[:first].tolist()], device=device)
    torch.manual_seed(seed)
    out = model.generate(prompt, max_new_tokens=max_new_tokens, temperature=0.7, top_k=50,
                         eos_id=tokenizer.im_end_id)
    rendered = tokenizer.decode(ids[:first].tolist())
    question = rendered.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>", 1)[0].strip()
    answer = tokenizer.decode(out[0, first:].tolist(), skip_special_tokens=True).strip()
    return f"user: {question}\nassistant: {answer}"
