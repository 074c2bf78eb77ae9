"""Training-step throughput and MFU: z2all against Hugging Face Llama peers on the 1.25B seed shape.

    python bench/mfu.py [--micro_batch=8] [--sweep=2,4,8,16] [--steps=10] [--warmup=5] [--cases=...]
    python bench/mfu.py --dry_run          # CPU, tiny shape: exercises the logic only
    python bench/mfu.py --cases=z2all --profile --trace_dir=DIR [--trace_stacks]   # + where the time goes

Cases (each in a fresh subprocess so peak memory is clean), all on the configs/z2all_1b.py shape at its seq len,
random tokens, the same micro-batch:
- z2all:      our model in bf16 params with fused ops, our DDP (world 1) and mixed-precision AdamW step
              (fp32 main params stored split, fused AdamW, grad clipping) exactly as train.py does it.
- hf_eager:   transformers LlamaForCausalLM, fp32 params, bf16 autocast, SDPA, torch fused AdamW.
- hf_compile: the same under torch.compile.
- hf_liger:   the same after liger_kernel.transformers.apply_liger_kernel_to_llama() (skipped if not importable).
- hf_torchao_fp8: the same with torchao's float8 training (convert_to_float8_training, its "rowwise" recipe: e4m3
              with row-wise scales for every GEMM of the decoder's linear layers, lm_head left in bf16) under
              torch.compile, as torchao recommends (skipped if torchao is not importable).
- hf_patch:   the same after our model.hf.patch_hf(model).
- z2all_compile (only when listed in --cases): z2all with model.compile(), as train.py --compile does.
One JSON line per case: name, micro_batch, tokens_per_s, mfu (PaLM: 6·N_non-embedding-input + 12·L·d·T
FLOPs per token, against --peak_tflops), peak_mem_gb, loss. With --sweep, z2all also runs at each listed
micro-batch and a z2all_best line follows. The last line is the ratio of z2all to the best off-the-shelf peer
(eager, compile, Liger; hf_patch runs our kernels, so it is reported but not counted as a peer).
Timing: --warmup steps, then --steps steps between two CUDA events (perf_counter on the CPU dry run).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE_FILE = os.path.join(ROOT, "configs", "z2all_1b.py")
SHAPE_KEYS = ("vocab_size", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "intermediate_size", "max_seq_len",
              "rope_theta", "rms_norm_eps", "tie_word_embeddings")
DRY_SHAPE = dict(vocab_size=512, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128,
                 max_seq_len=64, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
PEERS = ("hf_eager", "hf_compile", "hf_liger", "hf_patch", "hf_torchao_fp8")
# what a user can take off the shelf: the ratio's "best peer" is the fastest of these; hf_patch is HF running our
# own kernels (model.hf.patch_hf), reported beside them but not a peer to beat
OFF_THE_SHELF = ("hf_eager", "hf_compile", "hf_liger", "hf_torchao_fp8")
OURS = ("z2all", "z2all_compile")
CASES = OURS + PEERS
DEFAULT_CASES = ("z2all",) + PEERS


def load_shape(path: str = SHAPE_FILE) -> dict:
    """The model-shape keys of a config recipe (a file of Python assignments)."""
    scope: dict = {}
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), {}, scope)  # noqa: S102 - our own recipe file
    return {k: scope[k] for k in SHAPE_KEYS if k in scope}


# ---------------------------------------------------------------------------------------------
# one case (child process)


def parse_overrides(text: str) -> dict[str, dict]:
    """`key=value,key=value` (train.py's flat keys) -> {"model"|"ddp"|"optim": {field: typed value}}."""
    import configurator

    out: dict[str, dict] = {"model": {}, "ddp": {}, "optim": {}}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, raw = item.partition("=")
        if key not in configurator.KEYS or configurator.KEYS[key][0] not in out:
            raise ValueError(f"--z2all_set: {key!r} is not a model, ddp or optimizer key of train.py")
        section, typ = configurator.KEYS[key]
        out[section][key] = configurator.parse_value(key, raw, typ)
    return out


def _z2all_step(shape: dict, device, lr: float, compiled: bool = False, dry_run: bool = False, overrides=None):
    """(step(x, y) -> loss, flops_per_token) for our model and train.py's DDP + optimizer step."""
    import torch

    from model import Z2allConfig, Z2allForCausalLM
    from optimizer import build_optimizer
    from optimizer.config import OptimizerConfig
    from parallel.config import DDPConfig
    from parallel.ddp import DistributedDataParallel
    from parallel.dist import init_distributed

    overrides = overrides or {"model": {}, "ddp": {}, "optim": {}}
    cfg = Z2allConfig(**{**shape, **overrides["model"]})
    with torch.device(device):
        model = Z2allForCausalLM(cfg)
    model.to(torch.bfloat16)
    ctx = init_distributed(device.type, env={})
    ddp = DistributedDataParallel(model, DDPConfig(**overrides["ddp"]), ctx)
    opt_cfg = OptimizerConfig(**{"learning_rate": lr, "min_lr": 0.0, "warmup_iters": 0, **overrides["optim"]})
    optimizer = build_optimizer(opt_cfg, ddp, torch.bfloat16, ctx)
    ddp.register_post_reduce(optimizer.post_reduce_callback)
    if compiled:
        model.compile(backend="aot_eager" if dry_run else "inductor")

    def step(x, y):
        ddp.zero_grad_buffer()
        loss = ddp(x, targets=y).loss
        optimizer.scale_loss(loss).backward()
        ddp.finish_grad_sync()
        optimizer.step()
        return loss

    return step, model.flops_per_token(shape["max_seq_len"])


def build_hf(shape: dict, device, lr: float, variant: str, dry_run: bool):
    """(forward, model, optimizer, flops_per_token) of an HF Llama peer: fp32 params for bf16 autocast, SDPA,
    fused AdamW; `variant` adds Liger's kernels, our patch_hf, or torch.compile."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if variant == "hf_liger":
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama()  # patches the Llama classes: must precede construction
    hf_cfg = LlamaConfig(vocab_size=shape["vocab_size"], hidden_size=shape["hidden_dim"],
                         intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["n_layers"],
                         num_attention_heads=shape["n_heads"], num_key_value_heads=shape["n_kv_heads"],
                         max_position_embeddings=shape["max_seq_len"], rms_norm_eps=shape["rms_norm_eps"],
                         rope_theta=shape["rope_theta"], tie_word_embeddings=shape["tie_word_embeddings"],
                         attn_implementation="sdpa", use_cache=False)
    with torch.device(device):
        model = LlamaForCausalLM(hf_cfg)
    if variant == "hf_patch":
        from model.hf import patch_hf

        patch_hf(model)
    n = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    if shape["tie_word_embeddings"]:
        n += model.lm_head.weight.numel()
    flops = 6 * n + 12 * shape["n_layers"] * shape["hidden_dim"] * shape["max_seq_len"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")
    fwd = model
    if variant == "hf_torchao_fp8":
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        # the decoder's linear layers, as z2all's --fp8: the LM head stays in bf16
        convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name("rowwise"),
                                   module_filter_fn=lambda mod, fqn: fqn != "lm_head")
    if variant in ("hf_compile", "hf_torchao_fp8"):
        fwd = torch.compile(model, backend="aot_eager" if dry_run else "inductor")
    return fwd, model, opt, flops


def _hf_step(shape: dict, device, lr: float, variant: str, dry_run: bool):
    """(step(x, y) -> loss, flops_per_token) for an HF Llama peer (build_hf), clipping at 1.0 as z2all does."""
    import torch

    fwd, model, opt, flops = build_hf(shape, device, lr, variant, dry_run)

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = fwd(input_ids=x, labels=x).loss  # HF shifts labels inside: same tokens as our (x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, flops


def _skip_reason(name: str) -> str | None:
    import importlib.util

    if name == "hf_liger" and importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel not importable (pip install liger-kernel)"
    if name == "hf_torchao_fp8" and importlib.util.find_spec("torchao") is None:
        return "torchao not importable (pip install torchao)"
    if name.startswith("hf_") and importlib.util.find_spec("transformers") is None:
        return "transformers not importable"
    return None


def _time_steps(step, x, y, steps: int, cuda: bool) -> tuple[float, float, float]:
    """(seconds for `steps` steps, seconds the host spent issuing them, last loss).

    CUDA events around the loop and one sync at the end; the host time is the loop's own wall time before that
    sync. When it approaches the device time, the step is launch-bound (the GPU waits for Python).
    """
    import torch

    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step(x, y)
        end.record()
        host = time.perf_counter() - t0
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0, host, float(loss)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(x, y)
    host = time.perf_counter() - t0
    return host, host, float(loss)


def run_case(name: str, micro_batch: int, args) -> dict:
    """Build one case, warm up, time it; the result dict (or a skip/error dict)."""
    import torch

    skip = _skip_reason(name)
    if skip:
        return {"name": name, "micro_batch": micro_batch, "skipped": skip}
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        return {"name": name, "micro_batch": micro_batch, "skipped": "no CUDA device (use --dry_run on the CPU)"}
    device = torch.device("cuda" if cuda else "cpu")
    shape = DRY_SHAPE if args.dry_run else load_shape()
    torch.manual_seed(0)
    if name in OURS:
        step, flops = _z2all_step(shape, device, args.lr, compiled=name == "z2all_compile", dry_run=args.dry_run,
                                  overrides=parse_overrides(args.z2all_set))
    else:
        step, flops = _hf_step(shape, device, args.lr, name, args.dry_run)
    T, V = shape["max_seq_len"], shape["vocab_size"]
    tokens = torch.randint(0, V, (micro_batch, T + 1), device=device)
    x, y = tokens[:, :T].contiguous(), tokens[:, 1:].contiguous()
    for _ in range(args.warmup):
        step(x, y)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds, host_seconds, loss = _time_steps(step, x, y, args.steps, cuda)
    if args.profile:
        _profile(step, x, y, cuda, args.trace_dir, f"{name}_mb{micro_batch}", args.trace_stacks)
    tps = micro_batch * T * args.steps / seconds
    peak_mem = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    return {"name": name, "micro_batch": micro_batch, "tokens_per_s": round(tps, 1),
            "mfu": float(f"{flops * tps / (args.peak_tflops * 1e12):.4g}"),
            "peak_mem_gb": None if peak_mem is None else round(peak_mem, 2), "loss": round(loss, 4),
            "step_ms": round(1e3 * seconds / args.steps, 2), "host_ms_per_step": round(1e3 * host_seconds / args.steps, 2),
            "seq_len": T, "flops_per_token": flops, "steps": args.steps, "device": str(device)}


def _profile(step, x, y, cuda: bool, trace_dir: str = "", name: str = "case", stacks: bool = False) -> None:
    """Two more steps under the torch profiler; the top kernels by device time go to stderr.

    With trace_dir, the Chrome trace is written there as <name>.json.gz and bench/trace_report.py's summary
    (idle time, time per kernel kind, launch sites) is printed to stderr too. stacks=True records Python
    stacks (launch sites get source lines), but its host overhead starves the GPU: read idle time from a
    trace without stacks.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, with_stack=stacks) as prof:
        for _ in range(2):
            step(x, y)
        if cuda:
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90), file=sys.stderr)
    if trace_dir:
        from bench.trace_report import report

        os.makedirs(trace_dir, exist_ok=True)
        path = os.path.join(trace_dir, f"{name}.json.gz")
        prof.export_chrome_trace(path)
        if cuda:
            for row in report(path, steps=2, top=60):
                print(json.dumps(row), file=sys.stderr)


def child_main(args) -> None:
    import torch

    try:
        result = run_case(args.case, args.micro_batch, args)
    except torch.cuda.OutOfMemoryError:
        result = {"name": args.case, "micro_batch": args.micro_batch, "error": "CUDA out of memory"}
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# the driver (parent process)


def spawn(name: str, micro_batch: int, args) -> dict:
    """Run one case in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), f"--case={name}", f"--micro_batch={micro_batch}",
           f"--steps={args.steps}", f"--warmup={args.warmup}", f"--peak_tflops={args.peak_tflops}", f"--lr={args.lr}"]
    if args.dry_run:
        cmd.append("--dry_run")
    if args.profile:
        cmd.append("--profile")
    if args.trace_dir:
        cmd.append(f"--trace_dir={args.trace_dir}")
    if args.trace_stacks:
        cmd.append("--trace_stacks")
    if args.z2all_set:
        cmd.append(f"--z2all_set={args.z2all_set}")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if args.profile:
        print(proc.stderr[-20000:], file=sys.stderr, flush=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"name": name, "micro_batch": micro_batch, "error": f"exit code {proc.returncode}",
                "stderr_tail": proc.stderr[-2000:]}
    return json.loads(lines[-1])


def ratio_line(ours_cases: list[dict], peers: list[dict], best_sweep: dict | None) -> dict:
    """Our fastest case at --micro_batch against the fastest peer (and our best swept micro-batch)."""
    timed = [p for p in peers if "tokens_per_s" in p]
    mine = [o for o in ours_cases if "tokens_per_s" in o]
    out: dict = {"name": "ratio"}
    if not mine or not timed:
        out["error"] = "need a timed z2all case and at least one timed peer"
        return out
    ours = max(mine, key=lambda o: o["tokens_per_s"])
    best = max(timed, key=lambda p: p["tokens_per_s"])
    out.update(ours=ours["name"], ours_tokens_per_s=ours["tokens_per_s"], ours_peak_mem_gb=ours["peak_mem_gb"],
               best_peer=best["name"], best_peer_tokens_per_s=best["tokens_per_s"],
               best_peer_peak_mem_gb=best["peak_mem_gb"], ratio=round(ours["tokens_per_s"] / best["tokens_per_s"], 3))
    if best_sweep is not None:
        out.update(ours_best_micro_batch=best_sweep["micro_batch"],
                   ours_best_ratio=round(best_sweep["tokens_per_s"] / best["tokens_per_s"], 3))
    return out


def driver_main(args) -> None:
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise ValueError(f"--cases has unknown names {unknown}; choose from {', '.join(CASES)}")
    results = {}
    for name in cases:
        results[name] = spawn(name, args.micro_batch, args)
        print(json.dumps(results[name]), flush=True)
    best_sweep = None
    if args.sweep:
        sweep = [results.get("z2all")] if args.micro_batch in _sweep_sizes(args.sweep) else []
        for mb in _sweep_sizes(args.sweep):
            if mb != args.micro_batch:
                sweep.append(spawn("z2all", mb, args))
                print(json.dumps(sweep[-1]), flush=True)
        timed = [r for r in sweep if r and "tokens_per_s" in r]
        if timed:
            best_sweep = max(timed, key=lambda r: r["tokens_per_s"])
            print(json.dumps({**best_sweep, "name": "z2all_best"}), flush=True)
    print(json.dumps(ratio_line([results[o] for o in OURS if o in results],
                                [results[p] for p in OFF_THE_SHELF if p in results], best_sweep)), flush=True)


def _sweep_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise ValueError(f"--sweep must be a comma list of micro-batch sizes like 2,4,8,16, got {text!r}") from e
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sweep sizes must be >= 1, got {text!r}")
    return sizes


def parse_args(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--micro_batch", type=int, default=8, help="sequences per step, the same for every case")
    ap.add_argument("--sweep", default="", help="also run z2all at these micro-batches, e.g. 2,4,8,12,16")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; 2 with --dry_run)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps (default 5; 1 with --dry_run)")
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma list from {', '.join(CASES)}")
    ap.add_argument("--peak_tflops", type=float, default=989.4, help="bf16 dense peak (H100/H200: 989.4)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--dry_run", action="store_true", help="CPU, tiny shape, few steps: checks the logic only")
    ap.add_argument("--z2all_set", default="", help="train.py model/ddp/optimizer keys for our cases, e.g. "
                    "activation_checkpointing=selective,grad_reduce_in_fp32=false")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of two profiled steps to stderr")
    ap.add_argument("--trace_dir", default="", help="with --profile: write each case's Chrome trace there and print "
                    "bench/trace_report.py's summary of it")
    ap.add_argument("--trace_stacks", action="store_true", help="record Python stacks in the trace (source lines "
                    "for launch sites; inflates host time)")
    ap.add_argument("--case", default="", help=argparse.SUPPRESS)  # internal: run this one case here
    args = ap.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.dry_run else 10
    if args.warmup is None:
        args.warmup = 1 if args.dry_run else 5
    if not args.dry_run and args.steps < 10:
        raise ValueError(f"--steps={args.steps}: time at least 10 steps on the GPU")
    if args.micro_batch < 1 or args.steps < 1 or args.warmup < 0:
        raise ValueError("need --micro_batch >= 1, --steps >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    if args.case:
        child_main(args)
    else:
        driver_main(args)


if __name__ == "__main__":
    main()
