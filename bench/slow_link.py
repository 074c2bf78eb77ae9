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

Time to loss (--time_to_loss): what a user on a slow link compares is wall-clock time to a target loss, not equal
steps. Same namespace and launch, a validation every --eval_every steps:
  a. allreduce trains --steps steps (300 by default); its last validation loss is the target, its training time T.
  b. Each other case gets the budget B = --budget_frac * T (T/3 by default, the target's bound) and is sized to it
     as a user would size a run: its step time is measured first (a --calib_steps run, PowerSGD compressing from
     the first step), then max_iters = the steps that fit in B, so its learning-rate schedule (warm-up, cosine
     decay to min_lr) spans its own run as allreduce's spans 300 steps. PowerSGD runs plain all-reduce for the
     first --warmup_frac of its steps (torch's advice for start_powerSGD_iter: 10 % of the run), at
     allreduce's step time. Cases: bf16_allreduce and powersgd_rR_wP for each R of --ranks and each P of
     --warmup_frac (in %).
  c. One JSON line per case: its steps, warm-up, measured step time, training time, the validation curve (iter,
     training seconds, loss), its last validation loss, the training seconds to the target (the first validation
     at or below it) and that over T; then a summary line: the best setting and the target, the best PowerSGD
     reaching allreduce's loss in <= T/3.
  Training time is the sum of the log intervals' ms_per_iter: evaluation and checkpoint time are outside them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import signal
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
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per case (default 30; with --time_to_loss allreduce's steps, default 300)")
    p.add_argument("--log_interval", type=int, default=5, help="steps per timed interval")
    p.add_argument("--ranks", default=None, help="PowerSGD ranks, one case each (default 1,2,4; 4,8,16 with "
                   "--time_to_loss)")
    p.add_argument("--powersgd_start_iter", type=int, default=5, help="all-reduce steps before compression")
    p.add_argument("--cases", default="", help="comma-separated subset of the cases (default: all)")
    p.add_argument("--timeout_s", type=int, default=None, help="per case (default 900 s; 7200 s with --time_to_loss)")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--time_to_loss", action="store_true",
                   help="train to allreduce's --steps-step validation loss within a time budget (see the docstring)")
    p.add_argument("--eval_every", type=int, default=20, help="--time_to_loss: steps between validations")
    p.add_argument("--budget_frac", type=float, default=1 / 3,
                   help="--time_to_loss: each other case's training time, as a fraction of allreduce's")
    p.add_argument("--warmup_frac", default="0.1",
                   help="--time_to_loss: PowerSGD's all-reduce warm-up, a fraction of its run (comma-separated)")
    p.add_argument("--calib_steps", type=int, default=15, help="--time_to_loss: steps of each step-time run")
    p.add_argument("--reference", default="",
                   help="--time_to_loss: the JSON lines of an earlier run with the same --steps and flags; its "
                        "allreduce line gives the target and T instead of training allreduce again")
    args = p.parse_args(own)
    args.steps = args.steps or (300 if args.time_to_loss else 30)
    args.ranks = args.ranks or ("4,8,16" if args.time_to_loss else "1,2,4")
    args.timeout_s = args.timeout_s or (7200 if args.time_to_loss else 900)
    if args.time_to_loss:
        return _time_to_loss_args(args, p), extra
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


def _time_to_loss_args(args: argparse.Namespace, p: argparse.ArgumentParser) -> argparse.Namespace:
    """The --time_to_loss cases (no no_comm; allreduce first: it sets the target) and their constraints."""
    if args.steps % args.eval_every:
        p.error(f"--steps={args.steps} must be a multiple of --eval_every={args.eval_every}: allreduce's last "
                f"validation gives the target loss; e.g. --steps={args.steps // args.eval_every * args.eval_every}")
    try:
        fracs = [float(f) for f in args.warmup_frac.split(",") if f]
    except ValueError:
        fracs = []
    if not fracs or not all(0 <= f < 1 for f in fracs) or not 0 < args.budget_frac:
        p.error(f"--warmup_frac={args.warmup_frac!r} takes fractions in [0, 1) (e.g. 0.1,0.03) and "
                f"--budget_frac={args.budget_frac} must be > 0")
    if args.calib_steps < 2 * args.log_interval:
        p.error(f"--calib_steps={args.calib_steps} leaves no timed interval: use >= {2 * args.log_interval}")
    known = ["allreduce", "bf16_allreduce"] + [f"powersgd_r{r}_w{round(100 * f):g}" for r in _ranks(args.ranks, p)
                                               for f in fracs]
    chosen = [c for c in args.cases.split(",") if c] or known
    bad = [c for c in chosen if c not in known]
    if bad or ("allreduce" not in chosen and not args.reference):
        p.error(f"--cases: {bad or 'allreduce missing'}; --time_to_loss needs allreduce (the target; or give "
                f"--reference) and takes {', '.join(known)}")
    args.case_list = [c for c in known if c in chosen]
    return args


def _ranks(text: str, p: argparse.ArgumentParser) -> list[int]:
    try:
        ranks = [int(r) for r in text.split(",") if r]
    except ValueError:
        p.error(f"--ranks={text!r}: give comma-separated integers, e.g. 1,2,4")
    if not ranks or min(ranks) < 1:
        p.error(f"--ranks={text!r}: give ranks >= 1, e.g. 1,2,4")
    return ranks


def environment() -> dict:
    """Where a CPU bench ran (its JSON lines carry it): the date, the CPU model and cores, torch and Python."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": f"cpu: {model}, {os.cpu_count()} cores", "torch": torch.__version__,
            "python": platform.python_version()}


def case_flags(case: str, args: argparse.Namespace) -> tuple[int, list[str]]:
    """(world size, the case's train.py flags)."""
    if case == "no_comm":
        return 1, ["--comm_hook=allreduce"]
    if case.startswith("powersgd_r"):
        return 2, ["--comm_hook=powersgd", f"--powersgd_rank={case[len('powersgd_r'):].split('_w')[0]}",
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


# ------------------------------------------------------------------ --time_to_loss
def warmup_fraction(case: str) -> float:
    """powersgd_rR_wP -> P / 100 (0 for the all-reduce cases)."""
    return float(case.split("_w")[1]) / 100 if "_w" in case else 0.0


def ttl_argv(case: str, args, extra: list[str], out_dir: str, steps: int | str | None = None,
             start_iter: int | str = 0, eval_every: int | None = None) -> tuple[int, list[str]]:
    """train_argv for a run of `steps` (default --steps) with a validation and a log every `eval_every` steps
    (default --eval_every; 0: no validation, logs every --log_interval) and PowerSGD from step `start_iter`
    (the dry run shows the steps that the budget decides as N and the warm-up as W)."""
    world, argv = train_argv(case, args, [], out_dir)
    steps = args.steps if steps is None else steps
    every = args.eval_every if eval_every is None else eval_every
    ttl = [f"--max_iters={steps}", f"--log_interval={every or args.log_interval}", f"--eval_interval={every}",
           f"--save_interval={steps}"] + ([f"--powersgd_start_iter={start_iter}"] if "powersgd" in case else [])
    replaced = {flag.split("=")[0] for flag in ttl}
    return world, [a for a in argv if a.split("=")[0] not in replaced] + ttl + extra


def loss_curve(records: list[dict]) -> list[tuple[int, float, float]]:
    """(iter, training seconds so far, validation loss) at each validation that follows a log at its iter."""
    train_s, t, last = {0: 0.0}, 0.0, 0
    curve = []
    for r in records:
        if "ms_per_iter" in r:
            t += r["ms_per_iter"] / 1000.0 * (r["iter"] - last)
            last, train_s[r["iter"]] = r["iter"], t
        elif "valid_loss" in r and r["iter"] in train_s:
            curve.append((r["iter"], train_s[r["iter"]], r["valid_loss"]))
    return curve


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the case's process group (torchrun and its ranks), SIGKILL when it has not ended in 60 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_records(name: str, ns: str, world: int, argv: list[str], work: str, timeout_s: float) -> list[dict]:
    """Run one train.py job (its --out_dir work/name) in the namespace to its end; its metrics.jsonl records. The
    whole process group is stopped on a timeout or an interrupt, so no rank outlives the bench."""
    out_dir = os.path.join(work, name)
    cmd = launch_command(ns, world, argv)
    log_path = os.path.join(work, f"{name}.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            _stop(proc)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return read_metrics(os.path.join(out_dir, "metrics.jsonl"))


def plan_steps(budget_s: float, warm_frac: float, ar_step_s: float, step_s: float, eval_every: int) -> int:
    """The steps that fit in the budget when the first warm_frac of them run at all-reduce's step time, rounded
    down to a validation (at least one)."""
    steps = int(budget_s / (warm_frac * ar_step_s + (1 - warm_frac) * step_s))
    return max(eval_every, steps // eval_every * eval_every)


def ttl_result(case: str, curve: list, target: float, ref_s: float) -> dict:
    """Step c for one case: its last validation loss, the time to the target and its ratio to allreduce's."""
    reach = next((c for c in curve if c[2] <= target), None)
    return {"case": case, "steps": curve[-1][0], "train_s": round(curve[-1][1], 1), "valid_loss": curve[-1][2],
            "time_to_target_s": round(reach[1], 1) if reach else None,
            "time_vs_allreduce": reach[1] / ref_s if reach else None,
            "curve": [[i, round(t, 1), round(loss, 4)] for i, t, loss in curve]}


def ttl_summary(results: list[dict], args) -> dict:
    """The target (allreduce's last validation loss), the best PowerSGD setting and whether it takes <= T/3."""
    ar = next(r for r in results if r["case"] == "allreduce")
    psgd = [r for r in results if r["case"].startswith("powersgd") and r["time_to_target_s"] is not None]
    best = min(psgd, key=lambda r: r["time_to_target_s"]) if psgd else None
    return {"summary": "slow_link_time_to_loss", "rate_mbit": args.rate_mbit, "allreduce_steps": args.steps,
            "target_loss": ar["valid_loss"], "allreduce_train_s": ar["train_s"],
            "budget_s": round(args.budget_frac * ar["train_s"], 1), "best": best["case"] if best else None,
            "best_time_vs_allreduce": best["time_vs_allreduce"] if best else None,
            "target_met": bool(best and best["time_vs_allreduce"] <= 1 / 3)}


def step_time_s(case: str, ns: str, args, extra: list[str], work: str) -> float:
    """The case's step time (compressing from the first step): the median log interval after the first one."""
    name = f"calib_{case.split('_w')[0]}"
    world, argv = ttl_argv(case, args, extra, os.path.join(work, name), args.calib_steps, 0, 0)
    timed = timed_intervals(run_records(name, ns, world, argv, work, args.timeout_s), 0)
    return statistics.median(r["ms_per_iter"] for r in timed) / 1000.0


def reference_curve(path: str) -> list[tuple[int, float, float]]:
    """The allreduce curve of an earlier --time_to_loss run's JSON lines."""
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    ref = next((r for r in lines if r.get("case") == "allreduce"), None)
    if ref is None:
        raise SystemExit(f"error: --reference={path} has no allreduce line: give the output of a --time_to_loss run")
    return [tuple(point) for point in ref["curve"]]


def time_to_loss(args, extra: list[str], ns: str, work: str) -> list[dict]:
    """Steps a-c: allreduce to --steps (or its line of --reference), then every other case sized to the budget."""
    if args.reference:
        ref = reference_curve(args.reference)
    else:
        world, argv = ttl_argv("allreduce", args, extra, os.path.join(work, "allreduce"))
        ref = loss_curve(run_records("allreduce", ns, world, argv, work, args.timeout_s))
    if not ref or ref[-1][0] != args.steps:
        raise RuntimeError(f"allreduce logged no validation at step {args.steps}: {ref}")
    target, ref_s = ref[-1][2], ref[-1][1]
    budget_s = args.budget_frac * ref_s
    print(f"allreduce: valid {target:.4f} after {ref_s:.0f} s of training; budget {budget_s:.0f} s",
          file=sys.stderr, flush=True)
    results, calib = [ttl_result("allreduce", ref, target, ref_s)], {}
    for case in [c for c in args.case_list if c != "allreduce"]:
        key = case.split("_w")[0]
        if key not in calib:
            calib[key] = step_time_s(case, ns, args, extra, work)
        frac = warmup_fraction(case)
        steps = plan_steps(budget_s, frac, ref_s / args.steps, calib[key], args.eval_every)
        world, argv = ttl_argv(case, args, extra, os.path.join(work, case), steps, round(frac * steps))
        curve = loss_curve(run_records(case, ns, world, argv, work, args.timeout_s))
        results.append({**ttl_result(case, curve, target, ref_s), "warmup_steps": round(frac * steps),
                        "step_ms": round(1000 * calib[key], 1), "budget_s": round(budget_s, 1)})
        print(f"{case}: {steps} steps, valid {curve[-1][2]:.4f} after {curve[-1][1]:.0f} s; target "
              f"{'reached after %.0f s' % results[-1]['time_to_target_s'] if results[-1]['time_to_target_s'] else 'not reached'}",
              file=sys.stderr, flush=True)
    return results


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
            sized = args.time_to_loss and case != "allreduce"
            argv_of = ttl_argv if args.time_to_loss else train_argv
            print(" ".join(launch_command(ns, *argv_of(case, args, extra, f"<tmp>/{case}",
                                                       **({"steps": "N", "start_iter": "W"} if sized else {})))))
        print(" ".join(["ip", "netns", "del", ns]))
        return 0
    check_can_run()
    if args.time_to_loss:
        with tempfile.TemporaryDirectory(prefix="z2slow_") as work, namespace(ns, args.rate_mbit):
            results = time_to_loss(args, extra, ns, work)
        for r in results:
            print(json.dumps(r), flush=True)
        print(json.dumps(ttl_summary(results, args)), flush=True)
        return 0
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
