"""What SFT and DPO share: where their data and tokenizer are, the pretokenized set, the held-out split, the
evaluation sums and the end-of-run reply.

Data (--data_dir): a pretokenized set (a dir with the manifest.json of data_preprocess.pretokenize_sft) is used
as it is; raw records (a .jsonl/.json/.parquet file or a dir of them) are pretokenized on first use into the
sibling `<data_dir>.z2all-<task>-<max_seq_len>/`, rebuilt when the records, the tokenizer or the options change;
no --data_dir means the demo set (data/demo/sft, built with the demo corpus).
Tokenizer: --tokenizer_dir, else the run's own on --resume, else the --init_from model's (a run's tokenizer/, or
a Hugging Face model dir's own files), else the pretokenized set's, else the demo one. Its chat format renders
the records (tok.chat: z2all's ChatML, or a Hugging Face tokenizer's own template); the start-up says which.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys

import numpy as np
import torch
import torch.distributed as dist

from dataset.config import DataConfig
from dataset.sample_index import split_windows
from dataset.sft import MANIFEST_FILE
from tasks.setup import check_init_tokenizer, model_tokenizer_dir
from utils.logging import print0

DEMO_FILES = {"sft": "sft.jsonl", "dpo": "dpo.jsonl"}


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
    if not data.tokenizer_dir and not t.resume:
        check_init_tokenizer(t.init_from)
    if _is_pretraining_shards(data_dir):
        what = "conversation records" if task == "sft" else "preference pairs ({prompt, chosen, rejected})"
        raise ValueError(f"--data_dir={data_dir} holds pretraining shards (.bin from data_preprocess.pretokenize); "
                         f"--task_type={task} needs {what} in .jsonl/.json/.parquet files, or a dir made by "
                         f"`python -m data_preprocess.pretokenize_sft --task={task}`; omit --data_dir for the demo set")
    candidates = [t.out_dir if t.resume else "", t.init_from, data_dir if is_pretokenized(data_dir) else ""]
    tok = data.tokenizer_dir or next((found for c in candidates if c and (found := model_tokenizer_dir(c))), "")
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
    if inputs.tokenizer is not None:  # its chat format is built here, and refused here when it has none
        print0(f"chat template: {inputs.tokenizer.chat.description}", rank=ctx.rank)
    if is_pretokenized(data.data_dir):
        _check_rendered_for(data.data_dir, data.tokenizer_dir, inputs.tokenizer)
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


def _check_rendered_for(data_dir: str, tokenizer_dir: str, tokenizer) -> None:
    """A set pretokenized beforehand is used only with the tokenizer and chat template that rendered it (its
    manifest's key): another model's ids would mean other tokens, another template another format."""
    from data_preprocess.pretokenize_sft import read_manifest, tokenizer_hash

    key = (read_manifest(data_dir) or {}).get("key", {})
    same = key.get("tokenizer_sha256") == tokenizer_hash(tokenizer_dir) and (
        tokenizer is None or key.get("chat_format_sha256", tokenizer.chat.fingerprint) == tokenizer.chat.fingerprint)
    if not same:
        raise ValueError(f"--data_dir={data_dir} was pretokenized with another tokenizer or chat template than the "
                         f"model's ({tokenizer_dir}); pretokenize the records with --tokenizer_dir={tokenizer_dir}, or "
                         f"pass the records as --data_dir")


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


def _last_user_text(tokenizer, ids: list[int]) -> str:
    """The last user message of a rendered prompt: the last piece of text between special tokens that is not a
    bare role name (ChatML writes the role before the content, "user\ntext"; Llama 3 between header tokens)."""
    specials = sorted(tokenizer.special_tokens, key=len, reverse=True)
    pieces = re.split("|".join(map(re.escape, specials)), tokenizer.decode(ids)) if specials else [tokenizer.decode(ids)]
    texts = [re.sub(r"^(system|user|assistant)\n", "", p.strip("\n")).strip() for p in pieces]
    texts = [t for t in texts if t and t not in ("system", "user", "assistant")]
    return texts[-1] if texts else ""


def reply_sample(model, tokenizer, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int, seed: int, device) -> str:
    """The model's reply to a held-out prompt: the example's tokens up to its first trained token, then
    generation until the chat format's end-of-turn token."""
    first = int(np.argmax(mask != 0)) if mask.any() else len(ids)
    prompt = torch.tensor([ids[:first].tolist()], device=device)
    torch.manual_seed(seed)
    out = model.generate(prompt, max_new_tokens=max_new_tokens, temperature=0.7, top_k=50,
                         eos_id=tokenizer.chat.turn_end_id)
    question = _last_user_text(tokenizer, ids[:first].tolist())
    answer = tokenizer.decode(out[0, first:].tolist(), skip_special_tokens=True).strip()
    return f"user: {question}\nassistant: {answer}"
