"""PowerSGD on a slow link, on the CPU: gloo ranks in a network namespace whose loopback is rate-limited by tc.

    sudo python bench/slow_link.py [--rate_mbit=100] [--steps=30] [--log_interval=5] [--ranks=1,2,4]
        [--powersgd_start_iter=5] [--cases=...] [-- --key=value ...]   # after --: more train.py flags
    python bench/slow_link.py --dry_run [...]                          # print the commands, run nothing

The regime of a cross-node job on Ethernet, measured on one machine: the link, not the compute, bounds an
all-reduce. Every case is train.py's own step (torchrun train.py on the demo data, one micro-batch per rank per
step), timed by the ms_per_iter that train.py writes to metrics.jsonl.

1. Check that we are root and that `ip` and `tc` exist (apt-get install iproute2).
2. Make the namespace z2slow<pid>: loopback up, MTU 1500 (tbf drops packets bigger than its burst, and lo's MTU is
   64k), a tbf qdisc at --rate_mbit. Both ranks' traffic shares that one limit.
3. Run each case inside it (`ip netns exec ... env GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1 torchrun --standalone`),
   so the rendezvous and every collective use that loopback and nothing else:
     no_comm         world 1: the same per-rank step with no communication, the yardstick
     allreduce       world 2, fp32 grads all-reduced
     bf16_allreduce  world 2, bf16 compression
     powersgd_rR     world 2, PowerSGD at rank R for each R of --ranks (compression from --powersgd_start_iter on)
4. From each case's metrics.jsonl: the step time (the median of the log intervals after the first one, and for
   PowerSGD after its warm-up), tokens/s over those intervals, and the loss at the last step.
5. Print one JSON line per case: case, world, rate_mbit, steps, ms_per_iter, vs_no_comm (step time over
   no_comm's), tokens_per_s, bytes_per_step (per rank, payload handed to the collectives: a ring all-reduce on 2
   ranks puts that many bytes on the link from each rank), loss, loss_vs_allreduce and load_1m (the machine's
   load average before and after the case: other work on the machine shows in the step times); then a summary
   line with the targets: allreduce >= 5x no_comm, PowerSGD rank 4 <= 1.3x no_comm with its loss within 3%.
6. Delete the namespace, whatever happened.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from configurator import build_config  # noqa: E402
from model import Z2allForCausalLM  # noqa: E402
from parallel.comm_hooks.bucket import BucketParam  # noqa: E402
from parallel.comm_hooks.powersgd import make_plan  # noqa: E402
from utils.logging import read_metrics  # noqa: E402

BASE_CASES = ("no_comm", "allreduce", "bf16_allreduce")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the bench's options, the train.py flags given after --)."""
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--rate_mbit", type=float, default=100.0, help="the link's rate (both ranks share it)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per case")
    p.add_argument("--log_interval", type=int, default=5, help="steps per timed interval")
    p.add_argument("--ranks", default="1,2,4", help="PowerSGD ranks, one case each")
    p.add_argument("--powersgd_start_iter", type=int, default=5, help="all-reduce steps before compression")
    p.add_argument("--cases", default="", help="comma-separated subset of the cases (default: all)")
    p.add_argument("--timeout_s", type=int, default=900, help="per case")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(own)
    if args.steps < 2 * args.log_interval or args.steps <= args.powersgd_start_iter + args.log_interval:
        p.error(f"--steps={args.steps} leaves no timed interval after the first one and the PowerSGD warm-up: use "
                f"--steps >= {max(2 * args.log_interval, args.powersgd_start_iter + args.log_interval + 1)}")
    known = list(BASE_CASES) + [f"powersgd_r{r}" for r in _ranks(args.ranks, p)]
    chosen = [c for c in args.cases.split(",") if c] or known
    bad = [c for c in chosen if c not in known]
    if bad:
        p.error(f"--cases: unknown {bad}; choose from {', '.join(known)}")
    args.case_list = [c for c in known if c in chosen]
    return args, extra


def _ranks(text: str, p: argparse.ArgumentParser) -> list[int]:
    try:
        ranks = [int(r) for r in text.split(",") if r]
    except ValueError:
        p.error(f"--ranks={text!r}: give comma-separated integers, e.g. 1,2,4")
    if not ranks or min(ranks) < 1:
        p.error(f"--ranks={text!r}: give ranks >= 1, e.g. 1,2,4")
    return ranks


def case_flags(case: str, args: argparse.Namespace) -> tuple[int, list[str]]:
    """(world size, the case's train.py flags)."""
    if case == "no_comm":
        return 1, ["--comm_hook=allreduce"]
    if case.startswith("powersgd_r"):
        return 2, ["--comm_hook=powersgd", f"--powersgd_rank={case[len('powersgd_r'):]}",
                   f"--powersgd_start_iter={args.powersgd_start_iter}"]
    return 2, [f"--comm_hook={case}"]


def train_argv(case: str, args: argparse.Namespace, extra: list[str], out_dir: str) -> tuple[int, list[str]]:
    world, flags = case_flags(case, args)
    # one micro-batch per rank and step, no eval or sample inside the timed steps; extra flags win
    base = ["--device=cpu", f"--gradient_accumulation_steps={world}", f"--max_iters={args.steps}",
            f"--log_interval={args.log_interval}", "--eval_interval=0", f"--save_interval={args.steps}",
            "--sample_tokens=0", "--tensorboard=False", f"--out_dir={out_dir}"]
    return world, base + flags + extra


def netns_setup(ns: str, rate_mbit: float) -> list[list[str]]:
    return [["ip", "netns", "add", ns],
            ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
            ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "mtu", "1500"],
            ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate",
             f"{rate_mbit:g}mbit", "burst", "64kb", "latency", "100ms"]]


def launch_command(ns: str, world: int, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, "env", "GLOO_SOCKET_IFNAME=lo", "OMP_NUM_THREADS=1", sys.executable, "-m",
            "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", os.path.join(ROOT, "train.py"),
            *argv]


@contextmanager
def namespace(ns: str, rate_mbit: float):
    """The rate-limited namespace for the block; deleted on the way out, whatever happened (step 6)."""
    try:
        for cmd in netns_setup(ns, rate_mbit):
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        yield
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)


def timed_intervals(records: list[dict], skip_until: int) -> list[dict]:
    """The log records of train steps whose interval starts after `skip_until` (warm-up) and is not the first."""
    logs = [r for r in records if "ms_per_iter" in r]
    return [r for i, r in enumerate(logs) if i > 0 and logs[i - 1]["iter"] >= skip_until]


def summarize(case: str, records: list[dict], args: argparse.Namespace) -> dict:
    """Step 4: step time, tokens/s and last loss of one case."""
    skip = args.powersgd_start_iter if case.startswith("powersgd") else 0
    timed = timed_intervals(records, skip)
    if not timed:
        raise RuntimeError(f"{case}: no timed log interval in metrics.jsonl; raise --steps")
    last = [r for r in records if "loss" in r and "ms_per_iter" in r][-1]
    return {"ms_per_iter": statistics.median(r["ms_per_iter"] for r in timed),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed), "loss": last["loss"]}


def bytes_per_step(case: str, argv: list[str]) -> int:
    """Payload bytes per rank and step: every trainable param's grad (fp32, or bf16), or PowerSGD's P, Q and
    uncompressed grads (make_plan, as the hook decides; bucket padding aside). 0 without communication."""
    if case == "no_comm":
        return 0
    cfg = build_config(argv)
    with torch.device("meta"):
        model = Z2allForCausalLM(cfg.model)
    params, offset = [], 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            params.append(BucketParam(name, p, p.shape, offset, offset + p.numel()))
            offset += p.numel()
    if case == "allreduce":
        return 4 * offset
    if case == "bf16_allreduce":
        return 2 * offset
    return 4 * make_plan(tuple(params), cfg.ddp.powersgd_rank, cfg.ddp.powersgd_min_compression_rate).sent_elements


def run_case(case: str, ns: str, args, extra: list[str], work: str) -> dict:
    out_dir = os.path.join(work, case)
    world, argv = train_argv(case, args, extra, out_dir)
    cmd = launch_command(ns, world, argv)
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    res = {"case": case, "world": world, "rate_mbit": args.rate_mbit, "steps": args.steps}
    res.update(summarize(case, read_metrics(os.path.join(out_dir, "metrics.jsonl")), args))
    res["bytes_per_step"] = bytes_per_step(case, argv)
    # the 1-minute load average around the case: other work on the machine shows up in the step times
    res["load_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return res


def add_comparisons(results: list[dict]) -> dict:
    """vs_no_comm and loss_vs_allreduce on every line; the summary line with the targets (step 5)."""
    by = {r["case"]: r for r in results}
    base, ar = by.get("no_comm"), by.get("allreduce")
    for r in results:
        r["vs_no_comm"] = r["ms_per_iter"] / base["ms_per_iter"] if base else None
        r["loss_vs_allreduce"] = r["loss"] / ar["loss"] if ar else None
    summary = {"summary": "slow_link", "rate_mbit": results[0]["rate_mbit"] if results else None}
    if base and ar:
        summary["allreduce_vs_no_comm"] = ar["vs_no_comm"]
        summary["link_bound"] = ar["vs_no_comm"] >= 5.0
    r4 = by.get("powersgd_r4")
    if r4 and base and ar:
        summary.update(powersgd_r4_vs_no_comm=r4["vs_no_comm"], powersgd_r4_tokens_vs_allreduce=r4["tokens_per_s"] /
                       ar["tokens_per_s"], powersgd_r4_loss_vs_allreduce=r4["loss_vs_allreduce"],
                       target_met=r4["vs_no_comm"] <= 1.3 and abs(r4["loss_vs_allreduce"] - 1) <= 0.03)
    return summary


def check_can_run() -> None:
    if os.geteuid() != 0:
        raise SystemExit("error: bench/slow_link.py needs root (it adds a network namespace and a tc qdisc): run it "
                         "with sudo, or with --dry_run to see the commands")
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"error: {' and '.join(missing)} not found: apt-get install iproute2")


def main(argv: list[str]) -> int:
    args, extra = parse_args(argv)
    ns = f"z2slow{os.getpid()}"
    if args.dry_run:
        for cmd in netns_setup(ns, args.rate_mbit):
            print(" ".join(cmd))
        for case in args.case_list:
            print(" ".join(launch_command(ns, *train_argv(case, args, extra, f"<tmp>/{case}"))))
        print(" ".join(["ip", "netns", "del", ns]))
        return 0
    check_can_run()
    results = []
    with tempfile.TemporaryDirectory(prefix="z2slow_") as work, namespace(ns, args.rate_mbit):
        for case in args.case_list:
            results.append(run_case(case, ns, args, extra, work))
            print(f"{case}: {results[-1]['ms_per_iter']:.0f} ms/step", file=sys.stderr, flush=True)
    summary = add_comparisons(results)
    for r in results:
        print(json.dumps(r), flush=True)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
