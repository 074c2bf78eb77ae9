"""Import a Hugging Face Llama / Qwen2 / Mistral (no sliding window) checkpoint as a z2all run.

    python -m model.hf.import_hf --hf_dir=DIR --out_dir=RUN

Writes `RUN/ckpt/step_000000000/` (config.json + model.safetensors + COMPLETE, through
utils.checkpoint.CheckpointManager) so that `train.py --init_from=RUN`, `Z2allForCausalLM.from_pretrained(RUN)`
and `python -m model.export_hf --ckpt=RUN` all read it; the HF tokenizer files go to `RUN/tokenizer/`.
The weight layout is the inverse of model/export_hf.py (rotate-half RoPE on both sides: no permutation).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path

import torch

from model.config import Z2allConfig
from model.hf.names import one_to_one_pairs
from utils.cli import ArgumentParser, run_main
from utils.disk_faults import writing

SUPPORTED = ("llama", "qwen2", "mistral")
TOKENIZER_MARKERS = ("tokenizer", "vocab", "merges", "special_tokens", "added_tokens", "chat_template")
TOKENIZER_SUFFIXES = (".model", ".tiktoken")


def _is_tokenizer_file(p: Path) -> bool:
    """HF tokenizer files (tokenizer.json, vocab.json, merges.txt, ...) and ours (z2all_tokenizer.json)."""
    return p.is_file() and (any(m in p.name for m in TOKENIZER_MARKERS) or p.name.endswith(TOKENIZER_SUFFIXES))


def _first_id(v, default: int) -> int:
    if isinstance(v, list):
        v = v[0] if v else None
    return default if v is None else int(v)


def _rope_from_hf(hf: dict) -> tuple[float, str, float]:
    """(theta, scaling_type, factor) from rope_parameters (transformers 5) or rope_theta + rope_scaling (4.x)."""
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, "none", 1.0
    if kind not in ("linear", "dynamic"):
        raise ValueError(f"RoPE type {kind!r} of this checkpoint is not supported by z2all (linear, dynamic, none)")
    return theta, kind, float(params["factor"])


def z2all_config_from_hf(hf: dict) -> Z2allConfig:
    """Map an HF config dict to Z2allConfig; ValueError for features z2all does not have."""
    mtype = hf.get("model_type")
    if mtype not in SUPPORTED:
        raise ValueError(f"model_type {mtype!r} is not supported; expected one of {', '.join(SUPPORTED)}")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias", False):
        raise ValueError("only SwiGLU MLPs without bias (hidden_act=silu, mlp_bias=false) can be imported")
    if mtype == "llama" and hf.get("attention_bias", False):
        raise ValueError("Llama with attention_bias has an o_proj bias, which z2all does not have")
    if hf.get("use_sliding_window", False) or (mtype == "mistral" and hf.get("sliding_window") is not None):
        raise ValueError("sliding-window attention is not supported by z2all; use a checkpoint without it")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hidden // heads):
        raise ValueError(f"head_dim={hf['head_dim']} != hidden_size/num_attention_heads={hidden // heads}")
    theta, scaling, factor = _rope_from_hf(hf)
    cfg = Z2allConfig(
        vocab_size=hf["vocab_size"], hidden_dim=hidden, n_layers=hf["num_hidden_layers"], n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads, intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048), rope_theta=theta, rope_scaling_type=scaling,
        rope_scaling_factor=factor, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        initializer_range=hf.get("initializer_range", 0.02),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), attention_bias=mtype == "qwen2",
        attention_dropout=hf.get("attention_dropout", 0.0), bos_token_id=_first_id(hf.get("bos_token_id"), 1),
        eos_token_id=_first_id(hf.get("eos_token_id"), 2), pad_token_id=_first_id(hf.get("pad_token_id"), 0),
    )
    cfg.validate()
    return cfg


def load_hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors or of the shards listed in model.safetensors.index.json."""
    from safetensors.torch import load_file

    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(str(hf_dir / shard)))
        return state
    raise ValueError(f"{hf_dir} has no model.safetensors or model.safetensors.index.json; save the HF model "
                     f"with save_pretrained(..., safe_serialization=True) first")


def from_hf_state(cfg: Z2allConfig, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF state dict → Z2all state dict (fuses q/k/v and gate/up by concatenating rows)."""
    out = {ours: hf[name] for ours, name in one_to_one_pairs(cfg.n_layers, cfg.tie_word_embeddings)}
    for i in range(cfg.n_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        for kind in ("weight", "bias") if cfg.attention_bias else ("weight",):
            parts = [hf[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{dst}attn.qkv_proj.{kind}"] = torch.cat(parts, dim=0)
        out[dst + "mlp.gate_up_proj.weight"] = torch.cat([hf[src + "mlp.gate_proj.weight"],
                                                          hf[src + "mlp.up_proj.weight"]], dim=0)
    return {k: v.contiguous() for k, v in out.items()}


def import_hf(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert and write a step-0 checkpoint into the run dir out_dir. Returns the checkpoint dir.

    1. Read config.json and map it (rejecting unsupported features with the reason).
    2. Read the safetensors weights (single file or shards) and fuse qkv / gate_up.
    3. Save through CheckpointManager (atomic, COMPLETE last) and copy the tokenizer files, both into a temp dir
       inside out_dir, then rename ckpt/ and tokenizer/ into place: a failed import (a disk fault is a DiskFault:
       one line, exit 2) leaves no ckpt/, no temp dir and no out_dir it created, so the same command runs again.
    """
    from utils.checkpoint import CheckpointManager

    hf_dir, out = Path(hf_dir), Path(out_dir)
    for name in ("ckpt", "tokenizer"):
        if (out / name).exists():
            raise ValueError(f"--out_dir={out} already holds a run ({name}/); choose a new --out_dir for the import")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{config_path} does not exist; --hf_dir must be a Hugging Face model directory")
    cfg = z2all_config_from_hf(json.loads(config_path.read_text(encoding="utf-8")))
    state = from_hf_state(cfg, load_hf_state(hf_dir))
    created = not out.exists()
    stage = out / f".tmp-import-{secrets.token_hex(4)}"

    def cleanup() -> None:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)

    with writing("the imported checkpoint", out, cleanup=cleanup, fix="{action} or choose another --out_dir",
                 outer=True):
        stage.mkdir(parents=True)
        ckpt_dir = CheckpointManager(stage).save(step=0, model_state=state,
                                                 trainer_state={"iter": 0, "imported_from": str(hf_dir)},
                                                 extra_json={"config.json": cfg.to_dict()})
        files = sorted(f for f in hf_dir.iterdir() if _is_tokenizer_file(f))
        if files:
            (stage / "tokenizer").mkdir()
            for f in files:
                shutil.copy2(f, stage / "tokenizer" / f.name)
            os.rename(stage / "tokenizer", out / "tokenizer")
        os.rename(stage / "ckpt", out / "ckpt")
        stage.rmdir()
    return out / "ckpt" / ckpt_dir.name


def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hf_dir", required=True, help="Hugging Face model dir (config.json + safetensors)")
    ap.add_argument("--out_dir", required=True, help="z2all run dir to create")
    args = ap.parse_args(argv)
    ckpt = import_hf(args.hf_dir, args.out_dir)
    print(f"imported {args.hf_dir} to {ckpt}; start from it with train.py --init_from={args.out_dir}")


if __name__ == "__main__":
    sys.exit(run_main(main))
