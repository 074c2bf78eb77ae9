"""Export a Z2all checkpoint as a Hugging Face LlamaForCausalLM (or Qwen2ForCausalLM when attention_bias).

    python -m model.hf.export_hf --ckpt=RUN_OR_CKPT_DIR --out_dir=DIR [--tokenizer_dir=DIR] [--dtype=keep]

The output loads with `transformers.AutoModelForCausalLM.from_pretrained(DIR)`, no custom code.

Stop tokens: config.json and generation_config.json list as eos_token_id the end-of-turn token of the
tokenizer's chat format and its EOS, [<|im_end|>, <|endoftext|>] for a z2all tokenizer, so transformers'
`generate` (and a server reading generation_config.json) ends a reply where SFT taught the model to end it. The
end-of-turn id is the one the checkpoint's config recorded from the run's tokenizer; a checkpoint from before
that record takes <|im_end|> from the tokenizer files it exports.

Layout notes (why the conversion is plain slicing):
- RoPE: z2all uses the rotate-half layout (pairs (i, i + D/2)), the same as HF Llama/Qwen2, so q/k rows
  need no permutation (the interleaved (2i, 2i+1) layout of Meta's original checkpoints would).
- qkv_proj rows are [q heads | k heads | v heads], each head D consecutive rows, heads in HF order; GQA
  maps query head h to kv head h // (Hq/Hk) in both, so q_proj/k_proj/v_proj are row slices.
- gate_up_proj rows are [gate | up] → gate_proj, up_proj.
- attention_bias means q/k/v bias without o bias: Qwen2 has exactly that; HF Llama's attention_bias would
  also add an o_proj bias, so such models are exported as Qwen2.
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
from model.weights import read_pretrained, resolve_model_dir
from utils.cli import ArgumentParser, run_main
from utils.disk_faults import writing
from utils.fileio import follow_umask

DTYPES = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def stop_ids(cfg: Z2allConfig, tokenizer_dir: Path | None = None) -> int | list[int]:
    """eos_token_id for the export: [end-of-turn, EOS] when the model has an end-of-turn token, else EOS alone."""
    eot = cfg.eot_token_id
    if eot < 0 and tokenizer_dir is not None:
        eot = _im_end_of(tokenizer_dir)
    return [eot, cfg.eos_token_id] if 0 <= eot != cfg.eos_token_id else cfg.eos_token_id


def _im_end_of(tokenizer_dir: Path) -> int:
    """<|im_end|>'s id in a z2all tokenizer dir (z2all_tokenizer.json), or -1 (read as data: model/ does not import
    tokenizer/)."""
    try:
        special = json.loads((tokenizer_dir / "z2all_tokenizer.json").read_text(encoding="utf-8"))["special_tokens"]
        return int(special["<|im_end|>"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def generation_config(cfg: Z2allConfig, eos: int | list[int]) -> dict:
    """generation_config.json: the stop ids (what transformers' generate reads), BOS and PAD."""
    return {"bos_token_id": cfg.bos_token_id, "eos_token_id": eos, "pad_token_id": cfg.pad_token_id}


def hf_config(cfg: Z2allConfig, dtype: torch.dtype, eos: int | list[int] | None = None) -> dict:
    """The HF config.json: llama, or qwen2 when attention_bias. RoPE is written both as the 4.x keys
    (rope_theta, rope_scaling) and the 5.x rope_parameters, which agree. `eos` (stop_ids) defaults to EOS."""
    qwen = cfg.attention_bias
    rope_type = "default" if cfg.rope_scaling_type == "none" else cfg.rope_scaling_type
    rope_parameters = {"rope_type": rope_type, "rope_theta": cfg.rope_theta}
    rope_scaling = None
    if rope_type != "default":
        rope_parameters["factor"] = cfg.rope_scaling_factor
        rope_scaling = {"type": rope_type, "rope_type": rope_type, "factor": cfg.rope_scaling_factor}
    dtype_name = str(dtype).removeprefix("torch.")
    out = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_dim,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.initializer_range,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_dropout": cfg.attention_dropout,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id if eos is None else eos,
        "pad_token_id": cfg.pad_token_id,
        "use_cache": True,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }
    if qwen:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    else:
        out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    return out


def to_hf_state(cfg: Z2allConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Z2all state dict → HF Llama/Qwen2 state dict (contiguous copies; no lm_head when tied)."""
    D, Hq, Hk, I = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.intermediate_size
    out = {hf: state[ours] for ours, hf in one_to_one_pairs(cfg.n_layers, cfg.tie_word_embeddings)}
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias") if cfg.attention_bias else ("weight",):
            q, k, v = state[f"{src}attn.qkv_proj.{kind}"].split([Hq * D, Hk * D, Hk * D], dim=0)
            out[f"{dst}self_attn.q_proj.{kind}"] = q
            out[f"{dst}self_attn.k_proj.{kind}"] = k
            out[f"{dst}self_attn.v_proj.{kind}"] = v
        gate, up = state[src + "mlp.gate_up_proj.weight"].split([I, I], dim=0)
        out[dst + "mlp.gate_proj.weight"] = gate
        out[dst + "mlp.up_proj.weight"] = up
    return {k: v.contiguous().clone() for k, v in out.items()}


def find_tokenizer_dir(ckpt: str | Path, tokenizer_dir: str | None) -> Path | None:
    """--tokenizer_dir if given, else `<run>/tokenizer/` of the run that holds the checkpoint, else None."""
    if tokenizer_dir:
        p = Path(tokenizer_dir)
        if not p.is_dir():
            raise ValueError(f"--tokenizer_dir={tokenizer_dir} is not a directory")
        return p
    model_dir = resolve_model_dir(ckpt).resolve()
    for cand in (Path(ckpt) / "tokenizer", model_dir / "tokenizer", model_dir.parent.parent / "tokenizer"):
        if cand.is_dir():
            return cand
    return None


def export_hf(ckpt: str | Path, out_dir: str | Path, tokenizer_dir: str | None = None, dtype: str = "keep") -> Path:
    """Write config.json, model.safetensors and the tokenizer files into out_dir. Returns out_dir.

    1. Resolve ckpt (saved dir, step dir or run dir) and read its config and weights; check out_dir is new,
       empty or an earlier export (never replace anything else).
    2. Cast floating tensors if --dtype is not keep; unfuse qkv_proj and gate_up_proj.
    3. Write the HF config (llama or qwen2), generation_config.json (the stop ids), the weights and every
       tokenizer file into a temp dir beside out_dir, then rename it into place: a failed export leaves out_dir
       as it was and no temp dir (a disk fault is a DiskFault: one line, exit 2).
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype} is not one of {', '.join(DTYPES)}")
    cfg, state, _ = read_pretrained(ckpt)
    out = Path(out_dir)
    _check_out_dir(out)
    tok = find_tokenizer_dir(ckpt, tokenizer_dir)
    if DTYPES[dtype] is not None:
        state = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    with writing("the Hugging Face export", out, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True),
                 fix="{action} or choose another --out_dir (an earlier export there is kept)"):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        save_file(to_hf_state(cfg, state), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        follow_umask(tmp / "model.safetensors")
        param_dtype = state["embed_tokens.weight"].dtype
        eos = stop_ids(cfg, tok)
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, param_dtype, eos), indent=2) + "\n",
                                         encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(cfg, eos), indent=2) + "\n",
                                                    encoding="utf-8")
        if tok is not None:
            for f in tok.iterdir():
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
        _publish(tmp, out)
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished export onto out; an earlier export is moved aside first (and back if the rename fails)."""
    if not out.exists():
        os.rename(tmp, out)
        return
    aside = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    os.rename(out, aside)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out_dir={out} is a file; choose a directory for the export")
    if out.is_dir() and any(out.iterdir()) and not _is_export(out):
        raise ValueError(f"--out_dir={out} holds files that are not a Hugging Face export; choose a new or empty "
                         f"directory (an earlier export there is replaced whole)")


def _is_export(path: Path) -> bool:
    try:
        return "architectures" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="run dir, checkpoint step dir or save_pretrained dir")
    ap.add_argument("--out_dir", required=True, help="output dir for the HF model")
    ap.add_argument("--tokenizer_dir", default="", help="tokenizer files to copy (default: <run>/tokenizer/)")
    ap.add_argument("--dtype", default="keep", choices=list(DTYPES), help="weight dtype of the export")
    args = ap.parse_args(argv)
    out = export_hf(args.ckpt, args.out_dir, args.tokenizer_dir or None, args.dtype)
    print(f"exported {args.ckpt} to {out} (transformers.AutoModelForCausalLM.from_pretrained('{out}'))")


if __name__ == "__main__":
    sys.exit(run_main(main))
