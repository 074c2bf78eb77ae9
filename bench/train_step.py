"""The training step users run: train.py's own Trainer on real pretokenized shards, against off-the-shelf peers.

    python bench/train_step.py --data_dir=data/demo/bin [--micro_batch=8] [--ga=4] [--steps=10] [--warmup=3]
                               [--rounds=2] [--cases=z2all,hf_liger,hf_compile,torchtitan]
                               [--out=bench/results/X.jsonl]
    python bench/train_step.py --dry_run --data_dir=DIR     # CPU, tiny shape: exercises the logic only

Cases, each in a fresh process (clean peak memory), run in rounds in interleaved order (z2all, peer, z2all,
peer, ...) so that a GPU at its power cap favours neither side; every round is reported and the summary gives
the spread:
- z2all: the config of configs/z2all_1b.py with --batch_size/--gradient_accumulation_steps from the flags,
  built by train.build_run and stepped by Trainer.iteration(): data loading from the shards, gradient
  accumulation under no_sync, clipping at the recipe's 1.0, the optimizer step and logging every
  log_interval steps, exactly as `python train.py` runs them (eval and checkpoints are switched off: they
  are not part of a step).
- z2all:key=value;key=value (e.g. `z2all:cross_entropy_chunk_size=512`, `z2all:compile=true`): the same with
  these train.py flags (--key=value) on top of --z2all_set; reported under the name as given. The ratio lines
  use plain `z2all`. (Quote the --cases value in a shell: `;` ends a shell command.)
- hf_eager / hf_liger / hf_compile / hf_patch / hf_torchao_fp8: transformers LlamaForCausalLM on the same shape
  (bench/mfu.py's build_hf): fp32 params under bf16 autocast, SDPA, fused torch AdamW, the same micro-batches from
  the same shards, loss / ga per micro-batch, clip_grad_norm_(1.0), and loss.item() every log_interval steps.
  hf_torchao_fp8 converts the decoder's linear layers with torchao's float8 training ("rowwise") and compiles.
- torchtitan (and torchtitan:key=value;... with bench/peer_torchtitan.py's OPTIONS): torchtitan 0.3's Llama3 at
  the same shape, FFN width included. Its own: the model and init, its SelectiveAC (the default of its
  Trainer.Config and llama3 recipes), its compile path (apply_compile: torch.compile per TransformerBlock,
  fullgraph, which its Trainer runs with --compile.enable; off by default there, on here), its loss
  (ChunkedLossWrapper over CrossEntropyLoss, sum over the step's token count). Ours: the step loop above, the
  HF peers' (fp32 params, bf16 autocast, fused AdamW with its default_adamw settings, clipping, loss.item()
  every 10), and attention through its ScaledDotProductAttention module (its LM default is FlexAttention:
  torchtitan:attn=flex). Why not its Trainer: torchtitan.trainer imports HF `datasets` (not among the wheels
  installed), and a run needs tokenizer files at hf_assets_path (the llama3 recipes' ./assets/hf/Llama-3.1-8B,
  fetched from the hub with a token; the debug recipe's ./tests/assets/tokenizer lives in its source tree, not
  the wheel) and a text dataset (c4 streamed from the hub, or c4_test from its source tree), tokenized on the
  fly: its loader cannot read pretokenized shards, and the GPU machine reaches no network. It would also wrap
  the one GPU in FSDP2 (fully_shard: bf16 params, fp32 reduce) and CUDA-graph forward+backward. So the step is
  driven here, over the same batches as every other case. Dry run: the same code at DRY_SHAPE,
  with compile's backend aot_eager (dynamo traces every block fullgraph as on the GPU; no inductor build).
One JSON line per case and round: tokens_per_s, mfu (PaLM convention: 6·N + 12·L·d·T FLOPs per token, full
attention counted), step_ms, peak_mem_gb, and the SDPA backend torch picks for that side's attention inputs.
The last lines: per case the median and spread over rounds, z2all over each torchtitan case, and z2all over the
best off-the-shelf peer (hf_eager, hf_compile, hf_liger, torchtitan and its variants).
The first line records the device, date and versions (torch, CUDA, cuDNN, NCCL, triton, transformers, liger,
torchtitan).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.mfu import DRY_SHAPE, OFF_THE_SHELF, SHAPE_FILE, build_hf, load_shape  # noqa: E402

CASES = ("z2all", "hf_eager", "hf_compile", "hf_liger", "hf_patch", "hf_torchao_fp8", "torchtitan")
VARIANT_CASES = ("z2all", "torchtitan")  # the ones that take `name:key=value;key=value`
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
    for pkg in ("triton", "transformers", "liger-kernel", "torchao", "torchtitan"):
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
# case names: `base` or `base:key=value;key=value`


def split_case(name: str) -> tuple[str, list[tuple[str, str]]]:
    """`z2all:a=1;b=2` -> ("z2all", [("a", "1"), ("b", "2")]); ValueError for a malformed name."""
    base, colon, rest = name.partition(":")
    if base not in CASES:
        raise ValueError(f"unknown case {base!r}; choose from {', '.join(CASES)}")
    if colon and base not in VARIANT_CASES:
        raise ValueError(f"case {name!r}: only {', '.join(VARIANT_CASES)} take key=value settings")
    items = [t.strip() for t in rest.split(";") if t.strip()]
    pairs = [tuple(t.split("=", 1)) for t in items]
    if (colon and not items) or any(len(kv) != 2 or not kv[0] for kv in pairs):
        raise ValueError(f"case {name!r}: the settings after ':' are key=value;key=value")
    if base == "torchtitan":
        from bench.peer_torchtitan import parse_options

        parse_options(rest)  # its option names and values, checked in the driver before any process starts
    return base, pairs


# ---------------------------------------------------------------------------------------------
# the cases (child process)


def z2all_argv(args, out_dir: str) -> list[str]:
    shape = ["--vocab_size=512", "--hidden_dim=64", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2",
             "--intermediate_size=128", "--max_seq_len=64", "--device=cpu", "--dtype=float32"] if args.dry_run else []
    # a variant's settings come last: train.py's configurator takes the last value of a repeated key
    variant = [f"--{k}={v}" for k, v in split_case(args.case)[1]] if args.case else []
    return [SHAPE_FILE, f"--data_dir={args.data_dir}", f"--out_dir={out_dir}", f"--batch_size={args.micro_batch}",
            f"--gradient_accumulation_steps={args.ga}", f"--max_iters={10 ** 9}", "--eval_interval=0",
            f"--save_interval={10 ** 9}", "--sample_tokens=0", "--tensorboard=false", "--warmup_iters=100",
            *shape, *args.z2all_set, *variant]


def z2all_case(args):
    """(one_iteration(), flops_per_token, tokens per iteration, row extras) through train.py's own wiring."""
    import configurator
    import train
    from parallel.dist import init_distributed

    out_dir = tempfile.mkdtemp(prefix="z2all_train_step_")
    cfg = configurator.build_config(z2all_argv(args, out_dir))
    ctx = init_distributed(cfg.train.device)
    trainer = train.start_run(cfg, ctx, train.build_run(cfg, ctx))
    shape = {k: getattr(cfg.model, k) for k in ("hidden_dim", "n_heads", "n_kv_heads", "max_seq_len")}
    tokens = cfg.train.batch_size * cfg.model.max_seq_len * cfg.train.gradient_accumulation_steps
    return (trainer.iteration, trainer.flops_per_token, tokens,
            {"sdpa_backend": sdpa_choice(shape, args.micro_batch, True, ctx.device)})


def _peer_setup(args):
    """(device, shape, micro-batch stream, tokens per step): the peers' batches come from the z2all case's
    shards, in its sampler's order (seed 1234), as (x, y) windows on the device."""
    import torch

    from dataset.config import DataConfig
    from dataset.loader import BatchStream, stack_windows
    from dataset.pretrain import PretrainDataset
    from dataset.sampler import ResumableBatchSampler

    device = torch.device("cpu" if args.dry_run else "cuda")
    shape = DRY_SHAPE if args.dry_run else load_shape()
    ds = PretrainDataset(DataConfig(data_dir=args.data_dir), shape["max_seq_len"], shape["vocab_size"],
                         log=lambda m: None)
    stream = BatchStream(ds, ResumableBatchSampler(len(ds), args.micro_batch, seed=1234), stack_windows, device)
    return device, shape, stream, args.micro_batch * shape["max_seq_len"] * args.ga


def _peer_iteration(args, model, opt, micro_loss, stream, device):
    """One optimizer step of the peers' loop (module docstring). micro_loss(x, y) runs under bf16 autocast and
    returns one micro-batch's share of the step's loss (loss / ga); its backward runs after autocast exits."""
    import torch

    state = {"iter": 0}

    def iteration():
        for _ in range(args.ga):
            x, y = next(stream)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = micro_loss(x, y)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["iter"] += 1
        if state["iter"] % 10 == 0:  # the recipe's log_interval: one host read of the loss
            loss.item()

    return iteration


def hf_case(args, name: str):
    """The same for an HF peer: the step loop of the module docstring over the same shards."""
    device, shape, stream, tokens = _peer_setup(args)
    fwd, model, opt, flops = build_hf(shape, device, 3e-4, name, args.dry_run)

    def micro_loss(x, y):  # HF shifts the labels inside: x as labels gives the same next-token targets
        return fwd(input_ids=x, labels=x).loss / args.ga

    return (_peer_iteration(args, model, opt, micro_loss, stream, device), flops, tokens,
            {"sdpa_backend": sdpa_choice(shape, args.micro_batch, False, device)})


def torchtitan_case(args):
    """torchtitan's Llama3 (bench/peer_torchtitan.py) in the same step loop over the same shards."""
    import importlib.metadata as md

    import torch

    from bench.peer_torchtitan import build_torchtitan, parse_options, sdpa_priority

    device, shape, stream, tokens = _peer_setup(args)
    options = args.case.partition(":")[2]
    micro, model, opt, flops = build_torchtitan(shape, device, 3e-4, args.dry_run, options)
    # torchtitan's global_valid_tokens: every target of the step (no ignore_index in pretraining windows), kept
    # on the device as its Trainer keeps it, so the sum-reduced loss over it is the step's mean
    n_tokens = torch.tensor(tokens, device=device, dtype=torch.int64)
    opts = parse_options(options)
    if opts["attn"] == "sdpa":
        with sdpa_priority():  # the backend order its ScaledDotProductAttention sets (cuDNN first)
            backend = sdpa_choice(shape, args.micro_batch, True, device)
    else:
        backend = "flex_attention (torchtitan FlexAttention, compiled)"
    extras = {"sdpa_backend": backend, "torchtitan": {"version": md.version("torchtitan"), **opts}}
    iteration = _peer_iteration(args, model, opt, lambda x, y: micro(x, y, n_tokens), stream, device)
    return iteration, flops, tokens, extras


def _skip_reason(args, base: str) -> str | None:
    import importlib.util

    if base == "hf_liger" and importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel not importable"
    if base == "hf_torchao_fp8" and importlib.util.find_spec("torchao") is None:
        return "torchao not importable (pip install --no-deps .whl/*.whl)"
    if base == "hf_torchao_fp8" and args.dry_run:
        return "torchao's float8 GEMMs need a GPU with FP8 tensor cores (torch._scaled_mm): GPU only"
    if base == "torchtitan" and importlib.util.find_spec("torchtitan") is None:
        return "torchtitan not importable (pip install --no-deps .whl/*.whl)"
    if base == "torchtitan" and args.dry_run:
        from bench.peer_torchtitan import parse_options

        if parse_options(args.case.partition(":")[2])["attn"] == "flex":
            return "FlexAttention has no backward on the CPU (torch raises NotImplementedError): GPU only"
    return None


def run_case(args) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        return {"name": args.case, "skipped": "no CUDA device (use --dry_run on the CPU)"}
    base = split_case(args.case)[0]
    skip = _skip_reason(args, base)
    if skip:
        return {"name": args.case, "skipped": skip}
    torch.manual_seed(0)
    build = {"z2all": z2all_case, "torchtitan": torchtitan_case}.get(base, lambda a: hf_case(a, base))
    iteration, flops, tokens, extras = build(args)
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
            "flops_per_token": flops, **extras, "steps": args.steps}


# ---------------------------------------------------------------------------------------------
# the driver


def off_the_shelf(name: str) -> bool:
    """A peer a user can take as it is: bench/mfu.py's OFF_THE_SHELF, and torchtitan with any of its options."""
    return name in OFF_THE_SHELF or name.partition(":")[0] == "torchtitan"


def summarize(rows: list[dict]) -> list[dict]:
    """Median and spread of tokens/s per case (variants by their full names) over the rounds; z2all over each
    torchtitan case; last, z2all over the best off-the-shelf peer."""
    by_case: dict[str, list[float]] = {}
    for r in rows:
        if "tokens_per_s" in r:
            by_case.setdefault(r["name"], []).append(r["tokens_per_s"])
    out = [{"summary": name, "median_tokens_per_s": statistics.median(v), "min": min(v), "max": max(v),
            "spread_pct": round(100 * (max(v) - min(v)) / statistics.median(v), 2), "rounds": len(v)}
           for name, v in by_case.items()]
    peers = {s["summary"]: s["median_tokens_per_s"] for s in out if off_the_shelf(s["summary"])}
    if "z2all" in by_case:
        z = statistics.median(by_case["z2all"])
        for name in (p for p in peers if p.partition(":")[0] == "torchtitan"):
            out.append({"ratio": f"z2all / {name}", "peer": name, "value": round(z / peers[name], 3)})
        if peers:
            best = max(peers, key=peers.get)
            out.append({"ratio": "z2all / best off-the-shelf peer", "peer": best, "value": round(z / peers[best], 3)})
    return out


def driver(args, argv: list[str]) -> None:
    # shlex.join: a variant's `;` would end the command if the line were pasted into a shell unquoted
    rows = [{"versions": versions(), "command": "python bench/train_step.py " + shlex.join(argv)}]
    print(json.dumps(rows[0]), flush=True)
    for r in range(args.rounds):
        for case in args.cases:
            # an argument list, no shell: the case name reaches the child as one argv entry, `;` and all
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
    for c in args.cases + ([args.case] if args.case else []):
        try:
            split_case(c)
        except ValueError as e:
            ap.error(str(e))
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
