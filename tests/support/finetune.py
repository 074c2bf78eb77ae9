"""A tiny fine-tuning setup for tests: a tokenizer, a step-0 checkpoint to --init_from, SFT and DPO records.

The records are learnable: each prompt names a colour word and the chosen reply repeats it, the rejected one
says another word, so a few DPO steps raise the reward accuracy and SFT lowers its loss.
"""
from __future__ import annotations

import json
import os
import sysconfig

import torch

from model import Z2allConfig, Z2allForCausalLM
from tokenizer.train_tokenizer import train_bbpe
from utils.checkpoint import CheckpointManager, copy_tokenizer

WORDS = ["red", "green", "blue", "black", "white", "amber", "violet", "silver"]
TINY = """
hidden_dim = 32
n_layers = 2
n_heads = 2
n_kv_heads = 1
max_seq_len = 96
multiple_of = 16
batch_size = 4
gradient_accumulation_steps = 1
max_iters = 6
eval_interval = 3
eval_iters = 2
log_interval = 1
save_interval = 2
warmup_iters = 2
learning_rate = 3e-3
min_lr = 3e-4
tensorboard = False
sample_tokens = 4
attention_dropout = 0.0
residual_dropout = 0.0
valid_ratio = 0.1
"""


def _records(n: int) -> tuple[list[dict], list[dict]]:
    sft, dpo = [], []
    for i in range(n):
        w, other = WORDS[i % len(WORDS)], WORDS[(i * 3 + 1) % len(WORDS)]
        prompt = f"Say the colour {w} ({i})." + " Please." * (i % 5)  # skewed lengths: packing has work to do
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"{w} {w}"}]
        if i % 3 == 0:
            turns = [{"role": "system", "content": "Answer with colours."}] + turns
        sft.append({"messages": turns})
        dpo.append({"prompt": prompt, "chosen": f"{w} {w}", "rejected": f"{other} no"})
    return sft, dpo


def make_finetune(tmp_path, n: int = 96) -> dict:
    """{"config", "init", "sft", "dpo", "tokenizer"}: paths of a tiny config file, a step-0 run, the records."""
    root = tmp_path / "ft"
    if (root / "done").exists():
        return json.loads((root / "done").read_text())
    root.mkdir(parents=True, exist_ok=True)
    std = sysconfig.get_paths()["stdlib"]
    corpus = [open(os.path.join(std, "textwrap.py"), encoding="utf-8").read()[:8000], " ".join(WORDS) * 20]
    tok = train_bbpe(iter(corpus), 320, show_progress=False)
    tok_dir = root / "tokenizer"
    tok.save_pretrained(str(tok_dir))
    sft, dpo = _records(n)
    for name, recs in (("sft.jsonl", sft), ("dpo.jsonl", dpo)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    (root / "tiny.py").write_text(TINY)
    cfg = Z2allConfig(vocab_size=tok.model_vocab_size, hidden_dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                      max_seq_len=96, multiple_of=16, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                      pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    model = Z2allForCausalLM(cfg)
    init = root / "init"
    CheckpointManager(init).save(step=0, model_state=model.state_dict(), trainer_state={"iter": 0},
                                 extra_json={"config.json": cfg.to_dict()})
    copy_tokenizer(tok_dir, init)
    paths = {"config": str(root / "tiny.py"), "init": str(init), "sft": str(root / "sft.jsonl"),
             "dpo": str(root / "dpo.jsonl"), "tokenizer": str(tok_dir)}
    (root / "done").write_text(json.dumps(paths))
    return paths
