"""Data-parallel throughput: our hand-written DDP against torch.nn.parallel.DistributedDataParallel.

    python bench/ddp.py --nproc_per_node=N [--shape=1b|small] [--micro_batch=4] [--seq_len=2048]
        [--grad_accum=1] [--steps=10] [--warmup=3] [--bucket_size=40000000] [--cases=...] [--profile=DIR]
    python bench/ddp.py --dry_run [--nproc_per_node=2]           # CPU, gloo, tiny shape
    torchrun --nproc_per_node=N bench/ddp.py --case=ours [...]   # one case: what the driver launches
    torchrun --nproc_per_node=N bench/ddp.py [--cases=...]       # all cases one after another, same processes

Run with plain `python` (the driver), the script starts
`python -m torch.distributed.run --standalone --nproc_per_node=N bench/ddp.py --case=<case> ...` for each case
in turn (N defaults to 1), prints rank 0's JSON line of each and then the summary line. Fresh processes per
case keep what one case leaves behind (cached allocator blocks, anything still alive) out of the next case's
peak memory. bench/zero1.py drives its cases with the same launch_cases().

Run it with N = 1, 2, 4 for the scaling table. Every case uses the same model (a Z2all model if
`from model import ...` works, else a stack of Linear layers), the same seed and the same random tokens, with
bf16 params. One step = zero grads, grad_accum micro-batches (all but the last under no_sync), grad sync; no
optimizer (it is the same for everyone and not what is measured). Cases, each on a fresh model:
- ours:             our DDP, fp32 main grads (train.py's default), overlap_grad_reduce on
- ours_no_overlap:  the same with every bucket reduced in finish_grad_sync() after backward
- ours_bf16_grads:  our DDP reducing bf16 grads (grad_reduce_in_fp32=False), overlap on: like-for-like with torch
- torch:            torch DDP, bf16 grads, the same bucket size in bytes, gradient_as_bucket_view=True
One JSON line per case (rank 0): case, world, model, params, tokens_per_s_per_gpu, step_ms, peak_mem_gb, loss.
With --profile=DIR, the ours and ours_no_overlap cases also record a few steps with torch.profiler, write a
Chrome trace DIR/ddp_<case>_w<world>_rank0.json and report comm_overlap_frac: the fraction of NCCL kernel time
that runs concurrently with compute kernels (near 0 without overlap; high when the comm stream hides behind
backward). The last line compares ours with torch and overlap on with off.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from parallel.config import DDPConfig  # noqa: E402
from parallel.ddp import DistributedDataParallel  # noqa: E402
from parallel.dist import destroy, init_distributed  # noqa: E402

CASES = ("ours", "ours_no_overlap", "ours_bf16_grads", "torch")
SHAPES = {
    "1b": dict(vocab_size=64320, hidden_dim=2048, n_layers=22, n_heads=32, n_kv_heads=8, intermediate_size=5632),
    "small": dict(vocab_size=32000, hidden_dim=1024, n_layers=8, n_heads=16, n_kv_heads=4, intermediate_size=2816),
    "dry": dict(vocab_size=512, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    ap.add_argument("--model", default="auto", choices=("auto", "z2all", "mlp"),
                    help="auto: Z2all if importable, else a stack of Linear layers")
    ap.add_argument("--micro_batch", type=int, default=4)
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--grad_accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    add_case_args(ap, CASES, CASES)
    ap.add_argument("--profile", default="", help="directory for torch.profiler Chrome traces (ours cases)")
    ap.add_argument("--dry_run", action="store_true", help="CPU, gloo, tiny shape, 2 steps: exercises the logic")
    args = ap.parse_args(argv)
    check_case_args(ap, args, CASES)
    if args.dry_run:
        args.shape, args.seq_len, args.micro_batch, args.steps, args.warmup = "dry", 32, 2, 2, 1
        args.bucket_size = min(args.bucket_size, 20_000)
    return args


def add_case_args(ap: argparse.ArgumentParser, cases: tuple[str, ...], default_cases: tuple[str, ...]) -> None:
    """The options of the per-case benchmarks (this file, bench/zero1.py): bucket size, which cases, the driver's
    process count; check them with check_case_args after parsing."""
    ap.add_argument("--bucket_size", type=int, default=DDPConfig.bucket_size, help="elements per bucket")
    ap.add_argument("--cases", default=",".join(default_cases))
    ap.add_argument("--case", default="", choices=("",) + tuple(cases),
                    help="run only this case (in this process group)")
    ap.add_argument("--nproc_per_node", type=int, default=None,
                    help="driver (plain python): processes per case, default 1; not under torchrun")


def check_case_args(ap: argparse.ArgumentParser, args: argparse.Namespace, cases: tuple[str, ...]) -> None:
    """--cases names only known cases; --nproc_per_node is the driver's (check_nproc)."""
    unknown = set(args.cases.split(",")) - set(cases)
    if unknown:
        ap.error(f"--cases: unknown {sorted(unknown)}; choose from {','.join(cases)}")
    check_nproc(ap, args)


def check_nproc(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--nproc_per_node belongs to the driver; under torchrun the world size is torchrun's."""
    if args.nproc_per_node is None:
        return
    if "RANK" in os.environ:
        ap.error(f"--nproc_per_node={args.nproc_per_node} is for the driver (`python bench/...`); under torchrun "
                 f"the world size is torchrun's --nproc_per_node (here WORLD_SIZE={os.environ.get('WORLD_SIZE')})")
    if args.nproc_per_node < 1:
        ap.error(f"--nproc_per_node must be >= 1, got {args.nproc_per_node}")


def is_driver(args: argparse.Namespace) -> bool:
    """Plain `python bench/x.py` without --case: launch every case in fresh processes."""
    return "RANK" not in os.environ and not args.case


def worker_argv(argv: list[str], case: str) -> list[str]:
    """The driver's arguments for one case's workers: the driver-only flags dropped, --case=<case> added."""
    drop = ("--nproc_per_node", "--cases", "--case")
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok in drop:
            skip = True  # "--flag value": drop the value too
        elif not tok.startswith(tuple(f"{d}=" for d in drop)):
            out.append(tok)
    return out + [f"--case={case}"]


def launch_cases(script: str, argv: list[str], cases: list[str], nproc: int) -> tuple[list[dict], list[str]]:
    """Run each case in a fresh process group; returns (rank 0's records, failed cases).

    1. For each case: `python -m torch.distributed.run --standalone --nproc_per_node=nproc script` with
       worker_argv(argv, case), one case after the other (the GPUs are exclusive to the running case).
    2. Read the workers' stdout line by line: a JSON object whose "case" is this case is rank 0's record; it is
       printed and kept. Any other output goes to stderr, so this process's stdout stays JSON lines only.
    3. A case that exits non-zero or prints no record is reported on stderr and listed as failed; the later
       cases still run (one case running out of memory should not hide the others).
    """
    records, failed = [], []
    for case in cases:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               script] + worker_argv(argv, case)
        print(f"[driver] {' '.join(cmd)}", file=sys.stderr, flush=True)
        rec = None
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT) as proc:
            for line in proc.stdout:
                parsed = _json_object(line) or {}
                if rec is None and parsed.get("case") == case:
                    rec = parsed
                    print(json.dumps(rec), flush=True)
                elif not ("summary" in parsed or parsed.get("case") == "summary"):  # one case: its summary is moot
                    print(line, end="", file=sys.stderr, flush=True)
        if proc.returncode != 0 or rec is None:
            print(f"[driver] case {case} failed: exit code {proc.returncode}, "
                  f"{'a' if rec else 'no'} record", file=sys.stderr, flush=True)
            failed.append(case)
        else:
            records.append(rec)
    return records, failed


def _json_object(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------------------------------------- models


class LinearStack(nn.Module):
    """Fallback model: embedding, L residual MLP blocks, LM head with cross-entropy."""

    def __init__(self, vocab_size: int, hidden_dim: int, n_layers: int, intermediate_size: int, **_):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden_dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden_dim, intermediate_size, bias=False), nn.GELU(),
                          nn.Linear(intermediate_size, hidden_dim, bias=False)) for _ in range(n_layers))
        self.head = nn.Linear(hidden_dim, vocab_size, bias=False)

    def forward(self, input_ids, targets):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = h + block(h)
        logits = self.head(h).float()
        return nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


class Z2allLoss(nn.Module):
    """Z2all returning the loss tensor (so every case calls model(x, y) the same way)."""

    def __init__(self, shape: dict, seq_len: int):
        super().__init__()
        from model import Z2allConfig, Z2allForCausalLM

        self.model = Z2allForCausalLM(Z2allConfig(**shape, max_seq_len=seq_len))

    def forward(self, input_ids, targets):
        return self.model(input_ids, targets=targets).loss


def build_model(args, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, str]:
    shape = SHAPES[args.shape]
    kind = args.model
    if kind == "auto":
        try:
            from model import Z2allForCausalLM  # noqa: F401

            kind = "z2all"
        except ImportError:
            kind = "mlp"
    torch.manual_seed(1234)
    with torch.device(device):
        model = Z2allLoss(shape, args.seq_len) if kind == "z2all" else LinearStack(**shape)
    return model.to(dtype), kind


# ---------------------------------------------------------------------------------------------- cases


def make_step(case: str, model: nn.Module, ctx, args):
    """step(batches) -> last loss, for one case: zero grads, micro-batches (no_sync but the last), sync."""
    if case == "torch":
        bytes_per = next(model.parameters()).element_size()
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, process_group=ctx.group,
            bucket_cap_mb=args.bucket_size * bytes_per / 2**20, gradient_as_bucket_view=True)

        def zero():
            for p in model.parameters():
                p.grad = None

        finish = lambda: None  # noqa: E731 - torch DDP syncs inside backward
    else:
        cfg = DDPConfig(bucket_size=args.bucket_size, overlap_grad_reduce=case != "ours_no_overlap",
                        grad_reduce_in_fp32=case != "ours_bf16_grads", check_for_unused_params=False)
        wrapped = DistributedDataParallel(model, cfg, ctx)
        wrapped.broadcast_params()
        zero, finish = wrapped.zero_grad_buffer, wrapped.finish_grad_sync

    def step(batches):
        zero()
        with wrapped.no_sync():
            for x, y in batches[:-1]:
                (wrapped(x, y) / len(batches)).backward()
        loss = wrapped(*batches[-1])
        (loss / len(batches)).backward()
        finish()
        return loss

    return step, wrapped


def time_case(step, batches, args, cuda: bool) -> tuple[float, float]:
    """(seconds per step, last loss) over args.steps steps after args.warmup warm-up steps."""
    for _ in range(args.warmup):
        step(batches)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step(batches)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / args.steps, float(loss.detach().float())


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def overlap_fraction(kernels: list[tuple[str, float, float]]) -> float | None:
    """Share of NCCL kernel time during which some compute kernel also runs (interval intersection)."""
    comm = _union([(s, e) for n, s, e in kernels if "nccl" in n.lower()])
    compute = _union([(s, e) for n, s, e in kernels if "nccl" not in n.lower()])
    total = sum(e - s for s, e in comm)
    if total <= 0:
        return None
    both, j = 0.0, 0
    for s, e in comm:
        while j < len(compute) and compute[j][1] <= s:
            j += 1
        k = j
        while k < len(compute) and compute[k][0] < e:
            both += max(0.0, min(e, compute[k][1]) - max(s, compute[k][0]))
            k += 1
    return both / total


def profile_case(step, batches, path: str, cuda: bool) -> float | None:
    """Record 3 steps, write a Chrome trace to `path`, return the comm/compute overlap fraction (CUDA only)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            step(batches)
        if cuda:
            torch.cuda.synchronize()
    prof.export_chrome_trace(path)
    if not cuda:
        return None
    kernels = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA]
    return overlap_fraction(kernels)


def run_case(case: str, args, ctx, batches, cuda: bool) -> dict:
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    model, kind = build_model(args, ctx.device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    step, wrapped = make_step(case, model, ctx, args)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sec, loss = time_case(step, batches, args, cuda)
    tokens = args.micro_batch * args.seq_len * args.grad_accum
    rec = dict(case=case, world=ctx.world_size, model=kind, shape=args.shape, params=n_params,
               micro_batch=args.micro_batch, seq_len=args.seq_len, grad_accum=args.grad_accum,
               bucket_size=args.bucket_size, tokens_per_s_per_gpu=round(tokens / sec, 1),
               step_ms=round(sec * 1e3, 2), peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2)
               if cuda else None, loss=round(loss, 5))
    if args.profile and case in ("ours", "ours_no_overlap"):
        os.makedirs(args.profile, exist_ok=True)
        path = os.path.join(args.profile, f"ddp_{case}_w{ctx.world_size}_rank{ctx.rank}.json")
        frac = profile_case(step, batches, path, cuda)
        rec.update(trace=path if ctx.rank == 0 else None, comm_overlap_frac=None if frac is None else round(frac, 3))
    del step, wrapped, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return rec


# ---------------------------------------------------------------------------------------------- main


def _single_process_env() -> None:
    """A 1-rank process group when not launched by torchrun, so the torch DDP case can run too."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def summarize(records: list[dict], world: int) -> dict:
    """Ours over torch (fp32 and bf16 grads) and overlap on over off, in tokens/s per GPU."""
    by = {r["case"]: r["tokens_per_s_per_gpu"] for r in records}
    summary = {"summary": True, "world": world}
    if "ours" in by and "torch" in by:
        summary["ours_over_torch"] = round(by["ours"] / by["torch"], 3)
    if "ours_bf16_grads" in by and "torch" in by:
        summary["ours_bf16_grads_over_torch"] = round(by["ours_bf16_grads"] / by["torch"], 3)
    if "ours" in by and "ours_no_overlap" in by:
        summary["overlap_speedup"] = round(by["ours"] / by["ours_no_overlap"], 3)
    return summary


def run_in_process(args) -> list[dict]:
    """Every requested case (or only --case) in this process group, one after the other."""
    _single_process_env()
    ctx = init_distributed(device="cpu" if args.dry_run else "auto", timeout_s=600)
    cuda = ctx.device.type == "cuda"
    if not cuda and not args.dry_run:
        raise SystemExit("bench/ddp.py measures GPUs; use --dry_run on a CPU machine")
    vocab = SHAPES[args.shape]["vocab_size"]
    g = torch.Generator().manual_seed(100 + ctx.rank)  # each rank its own tokens, the same for every case
    batches = [tuple(torch.randint(0, vocab, (args.micro_batch, args.seq_len), generator=g).to(ctx.device)
                     for _ in range(2)) for _ in range(args.grad_accum)]
    records = []
    try:
        for case in [args.case] if args.case else args.cases.split(","):
            rec = run_case(case, args, ctx, batches, cuda)
            records.append(rec)
            if ctx.is_main:
                print(json.dumps(rec), flush=True)
        if ctx.is_main:
            print(json.dumps(summarize(records, ctx.world_size)), flush=True)
    finally:
        destroy()
    return records


def drive(script: str, argv: list[str], args, summarize_fn) -> list[dict]:
    """The driver's part of main(): every case in fresh processes, then summarize_fn(records, nproc) as the last line.
    Exits non-zero after the summary when a case failed."""
    nproc = args.nproc_per_node or 1
    records, failed = launch_cases(os.path.abspath(script), argv, args.cases.split(","), nproc)
    print(json.dumps(summarize_fn(records, nproc)), flush=True)
    if failed:
        name = os.path.relpath(os.path.abspath(script), ROOT)
        raise SystemExit(f"{name}: case(s) {','.join(failed)} failed (see the output above)")
    return records


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if not is_driver(args):
        return run_in_process(args)
    return drive(__file__, argv, args, summarize)


if __name__ == "__main__":
    main()
