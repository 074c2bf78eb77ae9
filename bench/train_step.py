"""The training step users run: train.py's own Trainer on real pretokenized shards, against Hugging Face peers.

    python bench/train_step.py --data_dir=data/demo/bin [--micro_batch=8] [--ga=4] [--steps=10] [--warmup=3]
                               [--rounds=2] [--cases=z2all,hf_liger,hf_compile] [--out=bench/results/X.jsonl]
    python bench/train_step.py --dry_run --data_dir=DIR     # CPU, tiny shape: exercises the logic only

Cases, each in a fresh process (clean peak memory), run in rounds in interleaved order (z2all, peer, z2all,
peer, ...) so that a GPU at its power cap favours neither side; every round is reported and the summary gives
the spread:
- z2all: the config of configs/z2all_1b.py with --batch_size/--gradient_accumulation_steps from the flags,
  built by train.build_run and stepped by Trainer.iteration(): data loading from the shards, gradient
  accumulation under no_sync, clipping at the recipe's 1.0, the optimizer step and logging every
  log_interval steps, exactly as `python train.py` runs them (eval and checkpoints are switched off: they
  are not part of a step).
- hf_eager / hf_liger / hf_compile / hf_patch: transformers LlamaForCausalLM on the same shape (bench/mfu.py's
  build_hf): fp32 params under bf16 autocast, SDPA, fused torch AdamW, the same micro-batches from the same
  shards, loss / ga per micro-batch, clip_grad_norm_(1.0), and loss.item() every log_interval steps.
One JSON line per case and round: tokens_per_s, mfu (PaLM convention: 6·N + 12·L·d·T FLOPs per token, full
attention counted), step_ms, peak_mem_gb, and the SDPA backend torch picks for that side's attention inputs.
The last lines: per case the median and spread over rounds, and z2all over the best off-the-shelf peer.
The first line records the device, date and versions (torch, CUDA, cuDNN, NCCL, triton, transformers, liger).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.mfu import DRY_SHAPE, OFF_THE_SHELF, SHAPE_FILE, build_hf, load_shape  # noqa: E402

CASES = ("z2all", "hf_eager", "hf_compile", "hf_liger", "hf_patch")
DEFAULT_CASES = ("z2all", "hf_liger", "hf_compile")
PEAK_TFLOPS = 989.4  # H100/H200 SXM dense bf16


def versions() -> dict:
    import importlib.metadata as md

    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None,
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "date": datetime.date.today().isoformat()}
    for pkg in ("triton", "transformers", "liger-kernel"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def sdpa_choice(shape: dict, micro_batch: int, gqa: bool, device) -> str:
    """The SDPA backend torch dispatches to for one side's attention inputs (bf16, causal)."""
    import torch

    if device.type != "cuda":
        return "math (cpu)"
    d = shape["hidden_dim"] // shape["n_heads"]
    kv = shape["n_kv_heads"] if gqa else shape["n_heads"]
    q = torch.empty(micro_batch, shape["n_heads"], shape["max_seq_len"], d, device=device, dtype=torch.bfloat16)
    k = torch.empty(micro_batch, kv, shape["max_seq_len"], d, device=device, dtype=torch.bfloat16)
    choice = torch._fused_sdp_choice(q, k, k, None, 0.0, True, enable_gqa=gqa)
    return torch.nn.attention.SDPBackend(choice).name


# ---------------------------------------------------------------------------------------------
# the cases (child process)


def z2all_argv(args, out_dir: str) -> list[str]:
    shape = ["--vocab_size=512", "--hidden_dim=64", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2",
             "--intermediate_size=128", "--max_seq_len=64", "--device=cpu", "--dtype=float32"] if args.dry_run else []
    return [SHAPE_FILE, f"--data_dir={args.data_dir}", f"--out_dir={out_dir}", f"--batch_size={args.micro_batch}",
            f"--gradient_accumulation_steps={args.ga}", f"--max_iters={10 ** 9}", "--eval_interval=0",
            f"--save_interval={10 ** 9}", "--sample_tokens=0", "--tensorboard=false", "--warmup_iters=100",
            *shape, *args.z2all_set]


def z2all_case(args):
    """(one_iteration(), flops_per_token, tokens per iteration, SDPA backend) through train.py's own wiring."""
    import configurator
    import train
    from parallel.dist import init_distributed

    out_dir = tempfile.mkdtemp(prefix="z2all_train_step_")
    cfg = configurator.build_config(z2all_argv(args, out_dir))
    ctx = init_distributed(cfg.train.device)
    trainer = train.start_run(cfg, ctx, train.build_run(cfg, ctx))
    shape = {k: getattr(cfg.model, k) for k in ("hidden_dim", "n_heads", "n_kv_heads", "max_seq_len")}
    tokens = cfg.train.batch_size * cfg.model.max_seq_len * cfg.train.gradient_accumulation_steps
    return trainer.iteration, trainer.flops_per_token, tokens, sdpa_choice(shape, args.micro_batch, True, ctx.device)


def hf_case(args, name: str):
    """The same for an HF peer: the step loop of the module docstring over the same shards."""
    import torch

    from dataset.config import DataConfig
    from dataset.loader import BatchStream, stack_windows
    from dataset.pretrain import PretrainDataset
    from dataset.sampler import ResumableBatchSampler

    device = torch.device("cpu" if args.dry_run else "cuda")
    shape = DRY_SHAPE if args.dry_run else load_shape()
    fwd, model, opt, flops = build_hf(shape, device, 3e-4, name, args.dry_run)
    ds = PretrainDataset(DataConfig(data_dir=args.data_dir), shape["max_seq_len"], shape["vocab_size"],
                         log=lambda m: None)
    stream = BatchStream(ds, ResumableBatchSampler(len(ds), args.micro_batch, seed=1234), stack_windows, device)
    state = {"iter": 0}

    def iteration():
        for _ in range(args.ga):
            x, _ = next(stream)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = fwd(input_ids=x, labels=x).loss / args.ga
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["iter"] += 1
        if state["iter"] % 10 == 0:  # the recipe's log_interval: one host read of the loss
            loss.item()

    tokens = args.micro_batch * shape["max_seq_len"] * args.ga
    return iteration, flops, tokens, sdpa_choice(shape, args.micro_batch, False, device)


def run_case(args) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        return {"name": args.case, "skipped": "no CUDA device (use --dry_run on the CPU)"}
    if args.case == "hf_liger":
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            return {"name": args.case, "skipped": "liger_kernel not importable"}
    torch.manual_seed(0)
    iteration, flops, tokens, backend = z2all_case(args) if args.case == "z2all" else hf_case(args, args.case)
    for _ in range(args.warmup):
        iteration()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        iteration()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tps = tokens * args.steps / seconds
    return {"name": args.case, "round": args.round, "micro_batch": args.micro_batch, "ga": args.ga,
            "tokens_per_s": round(tps, 1), "mfu": round(flops * tps / (PEAK_TFLOPS * 1e12), 4),
            "step_ms": round(1e3 * seconds / args.steps, 2),
            "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
            "sdpa_backend": backend, "steps": args.steps}


# ---------------------------------------------------------------------------------------------
# the driver


def summarize(rows: list[dict]) -> list[dict]:
    """Median and spread of tokens/s per case over the rounds, and z2all over the best off-the-shelf peer."""
    by_case: dict[str, list[float]] = {}
    for r in rows:
        if "tokens_per_s" in r:
            by_case.setdefault(r["name"], []).append(r["tokens_per_s"])
    out = [{"summary": name, "median_tokens_per_s": statistics.median(v), "min": min(v), "max": max(v),
            "spread_pct": round(100 * (max(v) - min(v)) / statistics.median(v), 2), "rounds": len(v)}
           for name, v in by_case.items()]
    peers = {s["summary"]: s["median_tokens_per_s"] for s in out if s["summary"] in OFF_THE_SHELF}
    if "z2all" in by_case and peers:
        best = max(peers, key=peers.get)
        out.append({"ratio": "z2all / best off-the-shelf peer", "peer": best,
                    "value": round(statistics.median(by_case["z2all"]) / peers[best], 3)})
    return out


def driver(args, argv: list[str]) -> None:
    rows = [{"versions": versions(), "command": "python bench/train_step.py " + " ".join(argv)}]
    print(json.dumps(rows[0]), flush=True)
    for r in range(args.rounds):
        for case in args.cases:
            cmd = [sys.executable, os.path.abspath(__file__), f"--case={case}", f"--round={r}",
                   *[a for a in argv if not a.startswith(("--cases=", "--out=", "--rounds="))]]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if proc.returncode == 0 and lines else \
                {"name": case, "round": r, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    for row in summarize(rows):
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data_dir", required=True, help="pretokenized shards (e.g. data/demo/bin)")
    ap.add_argument("--micro_batch", type=int, default=8)
    ap.add_argument("--ga", type=int, default=4, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=10, help="timed iterations per case")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every case")
    ap.add_argument("--cases", type=lambda s: [c for c in s.split(",") if c], default=list(DEFAULT_CASES))
    ap.add_argument("--z2all_set", type=lambda s: [f"--{kv}" for kv in s.split(",") if kv], default=[],
                    help="extra train.py settings for the z2all case: key=value,key=value")
    ap.add_argument("--out", default="", help="also write every JSON line to this file (bench/results/...)")
    ap.add_argument("--dry_run", action="store_true", help="CPU, tiny shape: the logic only")
    ap.add_argument("--case", default="", help=argparse.SUPPRESS)
    ap.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    bad = [c for c in args.cases if c not in CASES]
    if bad:
        ap.error(f"unknown cases {bad}; choose from {', '.join(CASES)}")
    return args


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args)), flush=True)
    else:
        driver(args, argv)


if __name__ == "__main__":
    main()
