"""ZeRO-1 memory and speed: peak memory per GPU with and without the distributed optimizer, and tokens/s.

    python bench/zero1.py --nproc_per_node=4 [--micro_batch=4] [--seq_len=2048] [--steps=10] [--warmup=3]
        [--bucket_size=40000000] [--cases=ddp,zero1,zero1_overlap]
    python bench/zero1.py --dry_run [--nproc_per_node=2]            # CPU, gloo, tiny shape
    torchrun --nproc_per_node=4 bench/zero1.py --case=zero1 [...]   # one case: what the driver launches
    torchrun --nproc_per_node=4 bench/zero1.py [--cases=...]        # all cases one after another, same processes

Run with plain `python` (the driver), the script starts
`python -m torch.distributed.run --standalone --nproc_per_node=N bench/zero1.py --case=<case> ...` for each
case in turn (N defaults to 1; bench/ddp.py's drive and launch_cases), prints rank 0's JSON line of each and then the
summary line. Each case in fresh processes: peak memory is then the case's own, not raised by what an earlier
case left in the caching allocator.

The model is the seed 1.25B shape (`from model import Z2allConfig, Z2allForCausalLM`) in bf16 with fp32
main grads, AdamW with grad_clip=1 (train.py's defaults). One step = zero grads, forward/backward,
finish_grad_sync, optimizer step. Cases, each on a fresh model:
- ddp:                    all-reduce, MixedPrecisionOptimizer (full fp32 main params + m + v per GPU)
- zero1:                  reduce-scatter, DistributedOptimizer, param all-gather finished inside step()
- zero1_overlap:          the same with --overlap_param_gather (gathers waited just before each module)
- zero1_overlap_optim:    zero1_overlap plus --overlap_optim_step (needs grad_clip=0, so it runs without clipping)
One JSON line per case (rank 0): case, world, params, peak_mem_gib (max over ranks), tokens_per_s,
tokens_per_s_per_gpu, step_ms, main_params. The last line compares: the theoretical saving B·N·(1−1/W) bytes
(B = 12 for the fp32 main param, Adam m and v sharded; 10 with split main params, whose sharded part is the
2-byte low half), the measured saving of zero1 against ddp and its fraction of the theory (target >= 0.75 on
4 GPUs), and zero1_overlap tokens/s against ddp (target >= 0.99).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from bench.ddp import add_case_args, check_case_args, drive, is_driver  # noqa: E402
from optimizer import build_optimizer  # noqa: E402
from optimizer.config import OptimizerConfig  # noqa: E402
from parallel.config import DDPConfig  # noqa: E402
from parallel.ddp import DistributedDataParallel  # noqa: E402
from parallel.dist import destroy, init_distributed  # noqa: E402

CASES = ("ddp", "zero1", "zero1_overlap", "zero1_overlap_optim")
SEED_SHAPE = dict(vocab_size=64320, hidden_dim=2048, n_layers=22, n_heads=32, n_kv_heads=8, intermediate_size=5632)
DRY_SHAPE = dict(vocab_size=512, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128)
GIB = 2.0 ** 30


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--micro_batch", type=int, default=4)
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    add_case_args(ap, CASES, ("ddp", "zero1", "zero1_overlap"))
    ap.add_argument("--dry_run", action="store_true", help="CPU, gloo, tiny shape, 2 steps: exercises the logic")
    args = ap.parse_args(argv)
    check_case_args(ap, args, CASES)
    args.shape = DRY_SHAPE if args.dry_run else SEED_SHAPE
    if args.dry_run:
        args.seq_len, args.micro_batch, args.steps, args.warmup = 32, 2, 2, 1
        args.bucket_size = min(args.bucket_size, 20_000)
    return args


def build(case: str, args, ctx):
    """(model, ddp, optimizer) for a case, on a fresh model with a fixed seed."""
    from model import Z2allConfig, Z2allForCausalLM

    torch.manual_seed(0)
    zero = case != "ddp"
    with torch.device(ctx.device):
        model = Z2allForCausalLM(Z2allConfig(**args.shape, max_seq_len=args.seq_len)).to(torch.bfloat16)
    dcfg = DDPConfig(bucket_size=args.bucket_size, comm_hook="reduce_scatter" if zero else "allreduce",
                     use_distributed_optimizer=zero)
    ddp = DistributedDataParallel(model, dcfg, ctx)
    ddp.broadcast_params()
    ocfg = OptimizerConfig(learning_rate=1e-4, grad_clip=1.0,
                           overlap_param_gather=case in ("zero1_overlap", "zero1_overlap_optim"))
    if case == "zero1_overlap_optim":
        ocfg.overlap_optim_step, ocfg.grad_clip = True, 0.0
    opt = build_optimizer(ocfg, ddp, torch.bfloat16, ctx)
    ddp.register_post_reduce(opt.post_reduce_callback)
    opt.set_lr(ocfg.learning_rate)
    return model, ddp, opt


def run_case(case: str, args, ctx, batch) -> dict:
    cuda = ctx.device.type == "cuda"
    model, ddp, opt = build(case, args, ctx)
    x, y = batch

    def step():
        ddp.zero_grad_buffer()
        ddp(x, targets=y).loss.backward()
        ddp.finish_grad_sync()
        opt.step()

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    ddp.finish_param_sync()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    ddp.finish_param_sync()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.tensor([torch.cuda.max_memory_allocated() if cuda else 0.0], dtype=torch.float64, device=ctx.device)
    if ctx.group is not None:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=ctx.group)
    tokens = args.steps * args.micro_batch * args.seq_len * ctx.world_size
    rec = {
        "bench": "zero1", "case": case, "world": ctx.world_size, "device": str(ctx.device),
        "params": sum(p.numel() for p in model.parameters()), "micro_batch": args.micro_batch,
        "seq_len": args.seq_len, "peak_mem_gib": round(peak.item() / GIB, 3),
        "tokens_per_s": round(tokens / dt, 1), "tokens_per_s_per_gpu": round(tokens / dt / ctx.world_size, 1),
        "step_ms": round(1000 * dt / args.steps, 2),
        "main_params": "split" if any(r.split for r in opt.regions) else "fp32",
    }
    del model, ddp, opt, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return rec


def summary(records: dict[str, dict], world: int) -> dict:
    """The targets of the ZeRO-1 issue: measured vs theoretical memory saving, overlap speed vs no ZeRO."""
    out = {"bench": "zero1", "case": "summary", "world": world}
    if "ddp" not in records:
        return out
    n = records["ddp"]["params"]
    # sharded per param: Adam m and v (8 bytes) and the main param: 4 bytes fp32, or its 2-byte low half when
    # split (the bf16 high half is the model's param, which every rank keeps whole)
    sharded = 8 + (2 if records["ddp"].get("main_params") == "split" else 4)
    theory = sharded * n * (1 - 1 / world) / GIB
    out["sharded_bytes_per_param"] = sharded
    out["theoretical_saving_gib"] = round(theory, 3)
    if "zero1" in records:
        measured = records["ddp"]["peak_mem_gib"] - records["zero1"]["peak_mem_gib"]
        out["measured_saving_gib"] = round(measured, 3)
        out["saving_fraction_of_theory"] = round(measured / theory, 3) if theory > 0 else None
        out["saving_target"] = 0.75
    if "zero1_overlap" in records:
        ratio = records["zero1_overlap"]["tokens_per_s"] / records["ddp"]["tokens_per_s"]
        out["overlap_tokens_per_s_vs_ddp"] = round(ratio, 4)
        out["speed_target"] = 0.99
    return out


def run_in_process(args) -> list[dict]:
    """Every requested case (or only --case) in this process group, one after the other."""
    ctx = init_distributed(device="cpu" if args.dry_run else "auto", timeout_s=600)
    if ctx.device.type != "cuda" and not args.dry_run:
        raise SystemExit("bench/zero1.py measures GPUs; use --dry_run on a CPU machine")
    vocab = args.shape["vocab_size"]
    g = torch.Generator().manual_seed(100 + ctx.rank)  # each rank its own tokens, the same for every case
    batch = tuple(torch.randint(0, vocab, (args.micro_batch, args.seq_len), generator=g).to(ctx.device)
                  for _ in range(2))
    records: dict[str, dict] = {}
    try:
        for case in [args.case] if args.case else args.cases.split(","):
            records[case] = run_case(case, args, ctx, batch)
            if ctx.is_main:
                print(json.dumps(records[case]), flush=True)
        if ctx.is_main:
            print(json.dumps(summary(records, ctx.world_size)), flush=True)
    finally:
        destroy()
    return list(records.values())


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if not is_driver(args):
        return run_in_process(args)
    return drive(__file__, argv, args, lambda records, nproc: summary({r["case"]: r for r in records}, nproc))


if __name__ == "__main__":
    main()
