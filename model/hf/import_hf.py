"""Read a Hugging Face Llama / Qwen2 / Mistral checkpoint (no sliding window that matters) as z2all weights, and
import one as a z2all run.

    python -m model.hf.import_hf --hf_dir=DIR --out_dir=RUN

`read_hf_dir(DIR)` converts in memory (the directory is only read): `train.py --init_from=DIR`,
`Z2allForCausalLM.from_pretrained(DIR)` and the chat load an HF directory through it (model/weights.py). The CLI
writes `RUN/ckpt/step_000000000/` (config.json + model.safetensors + COMPLETE, through
utils.checkpoint.CheckpointManager) so that `train.py --init_from=RUN`, `Z2allForCausalLM.from_pretrained(RUN)`
and `python -m model.export_hf --ckpt=RUN` all read it; the HF tokenizer files go to `RUN/tokenizer/`.
The weight layout is the inverse of model/export_hf.py (rotate-half RoPE on both sides: no permutation).
"""
from __future__ import annotations

import json
import os
import pickle
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


def _special_ids(hf: dict) -> dict:
    """bos/eos/pad/eot ids of an HF config. An eos list (transformers' several stop ids) is read as our export
    writes it: [end-of-turn, EOS]; a longer one keeps its last id as EOS (every id of it stops generation)."""
    def one(v, default: int) -> int:
        return default if v is None else int(v)

    eos = hf.get("eos_token_id")
    eot = -1
    if isinstance(eos, list):
        eot = int(eos[0]) if len(eos) > 1 else -1
        eos = eos[-1] if eos else None
    return dict(bos_token_id=one(hf.get("bos_token_id"), 1), eos_token_id=one(eos, 2),
                pad_token_id=one(hf.get("pad_token_id"), 0), eot_token_id=eot)


def _rope_from_hf(hf: dict) -> tuple[float, str, float]:
    """(theta, scaling_type, factor) from rope_parameters (transformers 5) or rope_theta + rope_scaling (4.x)."""
    params = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, "none", 1.0
    if kind not in ("linear", "dynamic"):
        raise ValueError(f"its RoPE type {kind!r} is not one z2all implements (default, linear, dynamic): the "
                         f"model would compute other positions than it was trained with")
    return theta, kind, float(params["factor"])


def _sliding_window(hf: dict, mtype: str) -> int | None:
    """The attention window when some layer uses one that is shorter than the model's context, else None (a window
    at least as long as max_position_embeddings never masks anything: full attention)."""
    window, context = hf.get("sliding_window"), hf.get("max_position_embeddings", 2048)
    if mtype == "mistral":
        used = window is not None
    elif mtype == "qwen2":
        layers = hf.get("num_hidden_layers", 0)
        used = "sliding_attention" in (hf.get("layer_types") or []) or (
            bool(hf.get("use_sliding_window")) and window is not None and hf.get("max_window_layers", layers) < layers)
    else:
        used = False
    return window if used and window is not None and window < context else None


def z2all_config_from_hf(hf: dict) -> Z2allConfig:
    """Map an HF config dict to Z2allConfig; ValueError (one line: what the checkpoint has that z2all has not) for
    the rest."""
    mtype = hf.get("model_type")
    if mtype not in SUPPORTED:
        raise ValueError(f"model_type {mtype!r} is not supported; expected one of {', '.join(SUPPORTED)}")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias", False):
        raise ValueError(f"its MLP is hidden_act={hf.get('hidden_act')!r} mlp_bias={hf.get('mlp_bias', False)}; z2all "
                         f"has SwiGLU MLPs without bias (hidden_act=silu, mlp_bias=false) only")
    if mtype == "llama" and hf.get("attention_bias", False):
        raise ValueError("Llama with attention_bias has an o_proj bias, which z2all does not have")
    window = _sliding_window(hf, mtype)
    if window is not None:
        raise ValueError(f"it uses sliding-window attention (sliding_window={window} < max_position_embeddings="
                         f"{hf.get('max_position_embeddings')}), which z2all does not have; use a checkpoint without it")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hidden // heads):
        raise ValueError(f"head_dim={hf['head_dim']} != hidden_size/num_attention_heads={hidden // heads}, which z2all "
                         f"requires")
    theta, scaling, factor = _rope_from_hf(hf)
    cfg = Z2allConfig(
        vocab_size=hf["vocab_size"], hidden_dim=hidden, n_layers=hf["num_hidden_layers"], n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads, intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048), rope_theta=theta, rope_scaling_type=scaling,
        rope_scaling_factor=factor, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        initializer_range=hf.get("initializer_range", 0.02),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), attention_bias=mtype == "qwen2",
        attention_dropout=hf.get("attention_dropout", 0.0), **_special_ids(hf),
    )
    cfg.validate()
    return cfg


def is_hf_model_dir(path: str | Path) -> bool:
    """A Hugging Face model directory: a config.json that names a model_type or architectures (the config.json of
    z2all's own saved and checkpoint dirs has neither)."""
    try:
        raw = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and ("model_type" in raw or "architectures" in raw)


def read_hf_config(hf_dir: str | Path) -> Z2allConfig:
    """The Z2allConfig of an HF model dir; one ValueError line naming the dir, what it has and what z2all takes."""
    path = Path(hf_dir) / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return z2all_config_from_hf(raw)
    except (OSError, ValueError, KeyError, TypeError) as e:
        what = f"its config.json lacks {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"cannot load the Hugging Face model {hf_dir}: {what}") from e


# Weight files of an HF model dir, in the order transformers prefers them: safetensors, then PyTorch pickles
# (read with weights_only=True: tensors only, never code).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def hf_weight_files(hf_dir: str | Path) -> list[Path]:
    """The files that hold the weights of an HF model dir (one file, or the shards an index names)."""
    hf_dir = Path(hf_dir)
    for name in WEIGHT_FILES:
        path = hf_dir / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"cannot read the shard index {path} ({type(e).__name__}: {e}); restore it") from e
        return [hf_dir / s for s in shards]
    raise ValueError(f"{hf_dir} has none of {', '.join(WEIGHT_FILES)}; save the HF model there with "
                     f"save_pretrained() first")


def load_hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of the HF model dir's weight files (safetensors, or .bin through torch.load(weights_only=True))."""
    from safetensors.torch import load_file

    state = {}
    for f in hf_weight_files(hf_dir):
        if f.suffix == ".safetensors":
            state.update(load_file(str(f)))
        else:
            try:
                state.update(torch.load(f, map_location="cpu", weights_only=True))
            except pickle.UnpicklingError as e:  # weights_only refuses any object that is not plain tensors/data
                raise ValueError(f"{f} holds more than tensors, and z2all loads PyTorch pickles with weights_only="
                                 f"True only (no code runs); convert it to safetensors") from e
    return state


def from_hf_state(cfg: Z2allConfig, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF state dict → Z2all state dict (fuses q/k/v and gate/up by concatenating rows)."""
    hf = {k.removeprefix("module."): v for k, v in hf.items()}
    try:
        out = {ours: hf[name] for ours, name in one_to_one_pairs(cfg.n_layers, cfg.tie_word_embeddings)}
        for i in range(cfg.n_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            for kind in ("weight", "bias") if cfg.attention_bias else ("weight",):
                parts = [hf[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{dst}attn.qkv_proj.{kind}"] = torch.cat(parts, dim=0)
            out[dst + "mlp.gate_up_proj.weight"] = torch.cat([hf[src + "mlp.gate_proj.weight"],
                                                              hf[src + "mlp.up_proj.weight"]], dim=0)
    except KeyError as e:
        raise ValueError(f"the weights lack the tensor {e.args[0]} that its config.json implies: an incomplete or "
                         f"foreign checkpoint") from e
    return {k: v.contiguous() for k, v in out.items()}


def read_hf_dir(hf_dir: str | Path) -> tuple[Z2allConfig, dict[str, torch.Tensor]]:
    """(config, our state dict on the CPU) of an HF model dir, converted in memory: the dir is only read."""
    cfg = read_hf_config(hf_dir)
    state = load_hf_state(Path(hf_dir))  # its errors name their files
    try:
        return cfg, from_hf_state(cfg, state)
    except ValueError as e:
        raise ValueError(f"cannot load the Hugging Face model {hf_dir}: {e}") from e


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
    if not (hf_dir / "config.json").is_file():
        raise ValueError(f"{hf_dir / 'config.json'} does not exist; --hf_dir must be a Hugging Face model directory")
    cfg, state = read_hf_dir(hf_dir)
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
