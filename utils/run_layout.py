"""The layout of a run directory: every name in it, and how step folders are named and found.

Torch-free on purpose: monitor_process.py reads run directories without importing torch, and the checkpoint code
(utils/checkpoint.py) writes them; both take the names and the step-folder rule from here, so they cannot drift.

    <out_dir>/exp_config.json  tokenizer/  metrics.jsonl  tb/  loss.png  heartbeat.json  exit_status.json
              monitor.log  rolled_back/
    <out_dir>/ckpt/step_000001000/  model.safetensors  optim/rank_00000.pt  comm/rank_00000.pt
                                    trainer_state.json  config.json  COMPLETE
    <out_dir>/ckpt/best/            the best step's weights, config and trainer state
    <out_dir>/ckpt/.tmp-*           a save in flight or torn (never a step folder)
"""
from __future__ import annotations

import os
import re
from pathlib import Path

EXP_CONFIG_NAME = "exp_config.json"  # the resolved config: data, parsed on --resume, never executed
LEGACY_EXP_CONFIG_NAME = "exp_config.py"  # what runs written before exp_config.json hold
TOKENIZER_DIRNAME = "tokenizer"
METRICS_NAME = "metrics.jsonl"
TB_DIRNAME = "tb"
PLOT_NAME = "loss.png"
HEARTBEAT_NAME = "heartbeat.json"
EXIT_STATUS_NAME = "exit_status.json"
MONITOR_LOG_NAME = "monitor.log"
ROLLED_BACK_DIRNAME = "rolled_back"

CKPT_DIRNAME = "ckpt"
BEST_NAME = "best"
TMP_PREFIX = ".tmp-"
COMPLETE_NAME = "COMPLETE"
MODEL_NAME = "model.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"
OPTIM_DIRNAME = "optim"
RANK_STATE_DIRNAME = "comm"  # per-rank state that is not the optimizer's: the comm hook's (PowerSGD error feedback)

_STEP_RE = re.compile(r"^step_(\d{9,})$")
_RANK_FILE_RE = re.compile(r"^rank_(\d{5,})\.pt$")


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def step_of(name: str) -> int | None:
    """The step of a step folder's name (`step_` + at least 9 digits), else None (best/, .tmp-*, anything else)."""
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


def rank_file_name(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def rank_of(name: str) -> int | None:
    """The rank of a per-rank state file's name (optim/ and comm/), else None."""
    m = _RANK_FILE_RE.match(name)
    return int(m.group(1)) if m else None


def ckpt_root(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CKPT_DIRNAME


def step_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every step folder directly under a ckpt/ folder, newest first (none if it is missing)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        step = step_of(entry.name)
        if step is not None and entry.is_dir():
            found.append((step, entry))
    return sorted(found, reverse=True)


def published_steps(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Step folders of a run that hold a COMPLETE marker (unverified: a cheap check), newest first."""
    return [(s, p) for s, p in step_dirs(ckpt_root(out_dir)) if (p / COMPLETE_NAME).is_file()]
