"""SFT packing benchmark: label tokens per second of packed rows against padded micro-batches.

    python -m bench.packing [--shape=tiny|1b] [--max_seq_len=N] [--batch_size=8] [--steps=20] [--warmup=3]
                            [--device=auto] [--attn_impl=auto] [--data_dir=DIR] [--dry_run]

Data: the demo SFT set (built by data_preprocess.demo on first use; its conversations skew short), pretokenized
at --max_seq_len with the demo tokenizer (data_preprocess.pretokenize_sft), or a pretokenized SFT --data_dir.
Model: Z2allForCausalLM in the shape of configs/default.py (tiny; fp32 on the CPU) or configs/z2all_1b.py
(1b; bf16 on a GPU), with its rows at --max_seq_len. Cases, in one run, one JSON line each:
- packed: PackedSFTDataset rows (best-fit decreasing over a seeded shuffle), --batch_size rows of max_seq_len
  tokens per micro-batch, collate_packed (cu_seqlens, positions restarting per conversation).
- padded: --batch_size conversations per micro-batch (a seeded shuffle), collate_padded (each micro-batch
  right-padded to its longest conversation), the baseline.
A step is the forward and backward of the model's fused loss (summed over the label tokens, divided by their
count), no optimizer step. --steps micro-batches per case: --warmup untimed passes over all of them (every
padded length compiles its kernels and attention plans once, as a long run amortises), then one timed pass
(CUDA-synchronised on a GPU), the two cases' steps interleaved so that both see the same load. Reported:
label_tokens_per_s, tokens_per_s (padding included), fill (real tokens / B*T), step_ms; the first line gives the
device, versions and date, the last the ratio of packed to padded label tokens per second.
--dry_run: a tiny shape, 2 micro-batches per case, to test the script.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repo root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.mfu import ROOT, load_shape  # noqa: E402
from dataset.sft import PackedSFTDataset, SFTDataset, collate_packed, collate_padded  # noqa: E402
from model import Z2allConfig, Z2allForCausalLM  # noqa: E402

SHAPES = {"tiny": os.path.join(ROOT, "configs", "default.py"), "1b": os.path.join(ROOT, "configs", "z2all_1b.py")}
DRY_SHAPE = dict(hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32)


def demo_sft_dir(max_seq_len: int) -> str:
    """The demo SFT set pretokenized at max_seq_len (built, or rebuilt when stale, on first use)."""
    from data_preprocess.demo import ensure_demo_data
    from data_preprocess.pretokenize_sft import ensure_pretokenized

    demo = ensure_demo_data(os.path.join(ROOT, "data", "demo"))
    out = os.path.join(ROOT, "data", "demo", f"sft_tokens_{max_seq_len}")
    return ensure_pretokenized(os.path.join(demo.sft_dir, "sft.jsonl"), demo.tokenizer_dir, out,
                               max_seq_len=max_seq_len, num_workers=1, progress=False, log=lambda *_: None)


def build_model(args, vocab_size: int, device: torch.device) -> Z2allForCausalLM:
    shape = dict(DRY_SHAPE) if args.dry_run else load_shape(SHAPES[args.shape])
    shape = {k: v for k, v in shape.items() if k in Z2allConfig.__dataclass_fields__}
    shape.update(vocab_size=max(shape.get("vocab_size", 0), vocab_size), max_seq_len=args.max_seq_len,
                 attn_impl=args.attn_impl)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    return Z2allForCausalLM(Z2allConfig(**shape)).to(device=device, dtype=dtype)


def micro_batches(case: str, ds: SFTDataset, args, count: int) -> list:
    """The first `count` micro-batches of a case (CPU tensors), from seeded shuffles."""
    rng = np.random.default_rng(args.seed)
    if case == "packed":
        rows = PackedSFTDataset(ds, args.max_seq_len, seed=args.seed)
        order = rng.permutation(len(rows))
        groups = [order[i * args.batch_size:(i + 1) * args.batch_size] for i in range(count)]
        return [collate_packed([rows[int(r)] for r in g], args.max_seq_len, ds.pad_id) for g in groups]
    order = rng.permutation(len(ds))
    groups = [order[i * args.batch_size:(i + 1) * args.batch_size] for i in range(count)]
    return [collate_padded([ds[int(i)] for i in g], ds.pad_id) for g in groups]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model: Z2allForCausalLM, b, device: torch.device) -> float:
    """Seconds of one forward + backward of micro-batch b."""
    _sync(device)
    t0 = time.perf_counter()
    cu = None if b.cu_seqlens is None else b.cu_seqlens.to(device)
    out = model(b.input_ids.to(device), targets=b.targets.to(device), position_ids=b.position_ids.to(device),
                cu_seqlens=cu, max_seqlen=b.max_seqlen, loss_reduction="sum")
    (out.loss / b.num_label_tokens).backward()
    _sync(device)
    return time.perf_counter() - t0


def run_cases(model: Z2allForCausalLM, ds: SFTDataset, args, device: torch.device) -> list[dict]:
    """Both cases on the same model. First --warmup untimed passes over every micro-batch to be timed: each
    new shape (a padded micro-batch has its own length) costs kernel compilation and attention-plan setup
    once, which a long run amortises; then one timed pass, the two cases' steps interleaved (packed, padded,
    packed, ...) so that both see the same load on a shared machine."""
    cases = ("packed", "padded")
    batches = {c: micro_batches(c, ds, args, args.steps) for c in cases}
    if any(len(b.input_ids) < args.batch_size for bs in batches.values() for b in bs):
        raise ValueError(f"the data has too few examples for {args.steps} micro-batches of {args.batch_size}: "
                         f"lower --steps or --batch_size")
    times: dict[str, list[float]] = {c: [] for c in cases}
    for rep in range(args.warmup + 1):
        for k in range(args.steps):
            for c in cases:
                seconds = _step(model, batches[c][k], device)
                model.zero_grad(set_to_none=True)
                if rep == args.warmup:
                    times[c].append(seconds)
    out = []
    for c in cases:
        timed, seconds = batches[c], sum(times[c])
        labels = sum(b.num_label_tokens for b in timed)
        tokens = sum(b.input_ids.numel() for b in timed)
        real = sum(int((b.input_ids != ds.pad_id).sum()) for b in timed)  # the pad id never occurs in a conversation
        out.append({"case": c, "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "steps": args.steps,
                    "label_tokens_per_s": round(labels / seconds, 1), "tokens_per_s": round(tokens / seconds, 1),
                    "fill": round(real / tokens, 4), "step_ms": round(1000 * seconds / args.steps, 2),
                    "median_step_ms": round(1000 * float(np.median(times[c])), 2),
                    "mean_row_tokens": round(tokens / (args.steps * args.batch_size), 1),
                    "label_tokens_per_step": round(labels / args.steps, 1)})
    return out


def header(device: torch.device, args) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"bench": "packing", "date": datetime.datetime.now().isoformat(timespec="seconds"), "device": str(device),
            "device_name": name, "torch": torch.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "loadavg_1m": round(os.getloadavg()[0], 2),
            "shape": "dry" if args.dry_run else args.shape, "attn_impl": args.attn_impl,
            "packed_attention": _packed_path(args.attn_impl, device)}


def _packed_path(impl: str, device: torch.device) -> str:
    """The attention path that packed rows take here (flash_attn, flex or the dense-mask sdpa)."""
    from model.ops.attention import resolve_attention_impl

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return resolve_attention_impl(impl, torch.zeros(1, 1, 1, 8, device=device, dtype=dtype), packed=True, dropout_p=0.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    p.add_argument("--max_seq_len", type=int, default=0, help="row length (default: the shape's max_seq_len)")
    p.add_argument("--batch_size", type=int, default=8, help="rows (packed) or conversations (padded) per step")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=1, help="untimed passes over the micro-batches before timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--attn_impl", default="auto", help="auto | sdpa | flash_attn | flex | torch")
    p.add_argument("--data_dir", default="", help="a pretokenized SFT dir (default: the demo set at --max_seq_len)")
    p.add_argument("--dry_run", action="store_true", help="tiny shape, 2 micro-batches per case, 1 warm-up pass")
    args = p.parse_args(argv)
    if args.dry_run:
        args.steps, args.warmup = 2, 1
    if not args.max_seq_len:
        args.max_seq_len = 64 if args.dry_run else int(load_shape(SHAPES[args.shape])["max_seq_len"])
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    ds = SFTDataset(args.data_dir or demo_sft_dir(args.max_seq_len))
    if ds.max_seq_len > args.max_seq_len:
        raise ValueError(f"{ds.data_dir} was pretokenized at max_seq_len={ds.max_seq_len} > --max_seq_len="
                         f"{args.max_seq_len}: pass --max_seq_len={ds.max_seq_len} or another --data_dir")
    model = build_model(args, int(ds.manifest["counts"]["vocab_size"]), device)
    lines = [header(device, args)]
    lines += run_cases(model, ds, args, device)
    lines.append({"ratio_label_tokens_per_s_packed_over_padded":
                  round(lines[1]["label_tokens_per_s"] / lines[2]["label_tokens_per_s"], 3)})
    for line in lines:
        print(json.dumps(line), flush=True)
    return lines


if __name__ == "__main__":
    main()
