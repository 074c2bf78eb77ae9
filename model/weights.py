"""Saving and loading Z2all weights: `save_pretrained` dirs, checkpoint step dirs and run dirs, and Hugging Face
Llama / Qwen2 / Mistral model dirs (converted in memory by model.hf.import_hf.read_hf_dir; the dir is only read).

One loader, `read_pretrained`, serves `Z2allForCausalLM.from_pretrained` (a new model from a dir) and
`load_pretrained_into` (weights into a model that train.py built from its config, for --init_from and
--resume). Weights are safetensors, so loading never runs pickle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from model.config import Z2allConfig
from utils.checkpoint import resolve_checkpoint
from utils.fileio import atomic_write_text, follow_umask

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# wrappers that prefix parameter names: a DDP/DataParallel module, torch.compile's OptimizedModule
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def save_pretrained(model: nn.Module, save_dir: str | os.PathLike) -> None:
    """Write config.json and model.safetensors (the model's state dict; a tied lm_head is left out by it)."""
    from safetensors.torch import save_file

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(save_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    follow_umask(save_dir / WEIGHTS_NAME)
    atomic_write_text(save_dir / CONFIG_NAME, model.config.to_json() + "\n")  # a full disk leaves no half config


def _is_hf(path: Path) -> bool:
    from model.hf.import_hf import is_hf_model_dir

    return is_hf_model_dir(path)


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A dir holding config.json + model.safetensors: a saved dir itself, or a checkpoint/run dir resolved to
    its newest verified checkpoint; a Hugging Face model dir is itself."""
    p = Path(path)
    if _is_hf(p) or ((p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file() and not (p / "ckpt").is_dir()):
        return p
    resolved = Path(resolve_checkpoint(p))
    if not (resolved / CONFIG_NAME).is_file() or not (resolved / WEIGHTS_NAME).is_file():
        raise ValueError(f"checkpoint {resolved} lacks {CONFIG_NAME} or {WEIGHTS_NAME}; it was not written by "
                         f"train.py or model.save_pretrained")
    return resolved


def _strip_prefixes(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _STRIP_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The files that hold the weights `read_pretrained(path)` loads (to key what is computed from them)."""
    model_dir = resolve_model_dir(path)
    if _is_hf(model_dir):
        from model.hf.import_hf import hf_weight_files

        return hf_weight_files(model_dir)
    return [model_dir / WEIGHTS_NAME]


def read_config(path: str | os.PathLike) -> tuple[Z2allConfig, Path]:
    """(config, the resolved dir) of a saved dir, a checkpoint step dir, a run dir or an HF model dir; the weights
    are not read."""
    model_dir = resolve_model_dir(path)
    if _is_hf(model_dir):
        from model.hf.import_hf import read_hf_config

        return read_hf_config(model_dir), model_dir
    config_path = model_dir / CONFIG_NAME
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {config_path}: {e}; the checkpoint is damaged, pick another one") from e
    if isinstance(raw.get("model"), dict):
        raw = raw["model"]
    return Z2allConfig.from_dict(raw), model_dir


def read_pretrained(path: str | os.PathLike) -> tuple[Z2allConfig, dict[str, torch.Tensor], Path]:
    """(config, state dict on the CPU, the resolved dir) of a saved dir, a checkpoint step dir, a run dir or an HF
    model dir."""
    from safetensors.torch import load_file

    if _is_hf(Path(path)):
        from model.hf.import_hf import read_hf_dir

        config, state = read_hf_dir(path)
        return config, state, Path(path)
    config, model_dir = read_config(path)
    return config, _strip_prefixes(load_file(str(model_dir / WEIGHTS_NAME))), model_dir


def load_pretrained_into(model: nn.Module, path: str | os.PathLike, fix: str) -> Path:
    """Copy the weights saved at `path` into `model` (same shape, checked first); returns the resolved dir.

    `fix` finishes the shape-mismatch error with what the caller's user should change.
    """
    saved, state, model_dir = read_pretrained(path)
    model.config.check_same_shape(saved, where=str(model_dir), fix=fix)
    model.load_state_dict(state, strict=True)  # a tied lm_head is filled from the embedding by a load hook
    return model_dir
