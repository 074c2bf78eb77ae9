"""Aborts at the exit of 2-rank gloo train.py runs on a loaded CPU: the reproduction of issue 27, item 5.

    python bench/exit_abort.py [--runs=20] [--hogs=2] [--gloo_nice=19] [--max_iters=10]
        [--train_py=train.py[,OTHER/train.py]] [-- --key=value ...]      # after --: more train.py flags

The failure: a rank of a run that finished (its checkpoint written, exit_status.json saying OK) dies of SIGABRT,
"terminate called without an active exception". Its backtrace (a core dump, bench/RESULTS.md): a gloo worker
thread (ProcessGroupGloo::runLoop) releases a finished all-reduce (~AsyncWork), whose tensor's Python object is
already gone, so freeing it takes the GIL (TensorImpl::decref_pyobject, gil_scoped_acquire); the main thread is
in Py_FinalizeEx by then, so take_gil ends the thread with pthread_exit, and the forced unwinding through C++
calls std::terminate. It needs the worker to be off the CPU between the end of the collective and that release,
while the main thread runs to the end of the process: on 2 busy cores about 1 run in 50.

1. Write a synthetic corpus and a tiny model config (tests/support/runs.py's shape) to a temp dir.
2. Start --hogs busy-loop processes beside the runs: the load of a busy node.
3. --runs times, alternating between the --train_py files (before and after a change: the load hits both alike):
   torchrun --standalone --nproc_per_node=2 TRAIN_PY with PowerSGD from step 2 (as
   tests/dist/test_powersgd_train.py), --max_iters steps and a checkpoint at the end. With --gloo_nice N > 0 a
   watcher renices the ranks' gloo worker threads (pt_gloo_runloop) to N as they appear: the scheduler then runs
   them after everything else, which widens the race's window without changing a line of the code path
   (0: the natural rate).
4. Each run is ok (exit 0), abort (a rank died of SIGABRT or printed "terminate called") or failed (anything
   else: its stderr's tail goes to stderr).
5. One JSON line per train.py: device, date, versions, its git commit, runs, ok, abort, failed, hogs, gloo_nice,
   seconds, load_1m (the 1-minute load average before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.slow_link import environment  # noqa: E402
from dataset.format import write_bin  # noqa: E402

VOCAB = 128
TINY = """
vocab_size = 128
hidden_dim = 32
n_layers = 2
n_heads = 2
n_kv_heads = 1
max_seq_len = 16
multiple_of = 16
batch_size = 4
gradient_accumulation_steps = 2
warmup_iters = 2
learning_rate = 1e-2
min_lr = 1e-3
tensorboard = False
sample_tokens = 0
"""
GLOO_WORKER = "pt_gloo_runloop"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--runs", type=int, default=20, help="runs per train.py")
    p.add_argument("--hogs", type=int, default=2, help="busy-loop processes beside the runs")
    p.add_argument("--gloo_nice", type=int, default=19, help="renice the ranks' gloo worker threads (0: leave them)")
    p.add_argument("--max_iters", type=int, default=10, help="steps per run")
    p.add_argument("--train_py", default=os.path.join(ROOT, "train.py"), help="comma-separated train.py files, "
                   "run in turn (e.g. another checkout's, to compare before and after a change)")
    p.add_argument("--timeout_s", type=int, default=600, help="per run")
    args = p.parse_args(own)
    if args.runs < 1 or args.hogs < 0 or not 0 <= args.gloo_nice <= 19 or args.max_iters < 3:
        p.error(f"need --runs >= 1, --hogs >= 0, 0 <= --gloo_nice <= 19 and --max_iters >= 3; got --runs="
                f"{args.runs} --hogs={args.hogs} --gloo_nice={args.gloo_nice} --max_iters={args.max_iters}")
    args.scripts = [os.path.abspath(s) for s in args.train_py.split(",") if s]
    missing = [s for s in args.scripts if not os.path.isfile(s)]
    if missing:
        p.error(f"--train_py: {missing} not found; give paths to train.py files")
    return args, extra


def write_data(work: str) -> tuple[str, str]:
    """(the config file, the data dir): a learnable repeating pattern, as the tests' make_run writes."""
    data = os.path.join(work, "data")
    os.makedirs(data)
    rng = np.random.default_rng(0)
    tokens = np.concatenate([(np.arange(40) * k) % VOCAB for k in rng.integers(1, 7, size=200)])
    write_bin(os.path.join(data, "shard_000.bin"), tokens.astype(np.uint16), VOCAB, num_docs=200)
    cfg = os.path.join(work, "tiny.py")
    with open(cfg, "w") as f:
        f.write(TINY)
    return cfg, data


def command(script: str, cfg: str, data: str, out_dir: str, max_iters: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, cfg,
            f"--data_dir={data}", f"--out_dir={out_dir}", f"--max_iters={max_iters}", "--log_interval=5",
            "--eval_interval=0", f"--save_interval={max_iters}", "--comm_hook=powersgd", "--powersgd_rank=4",
            "--powersgd_start_iter=2", *extra]


def _gloo_workers(marker: str) -> list[int]:
    """Thread ids of the gloo worker threads of the processes whose command line holds `marker`."""
    tids = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    if f.read().strip() == GLOO_WORKER:
                        tids.append(int(tid))
        except OSError:  # the process or thread ended meanwhile
            continue
    return tids


def renice_while(proc: subprocess.Popen, marker: str, nice: int) -> int:
    """Renice every gloo worker thread of the run to `nice` as it appears, until the run ends; how many."""
    done: set[int] = set()
    while proc.poll() is None:
        for tid in _gloo_workers(marker):
            if tid not in done:
                try:
                    os.setpriority(os.PRIO_PROCESS, tid, nice)  # a thread id: this thread only (Linux)
                    done.add(tid)
                except OSError:
                    pass
        time.sleep(0.02)
    return len(done)


def run_once(cmd: list[str], out_dir: str, args) -> str:
    """'ok', 'abort' or 'failed' (with the stderr's tail printed)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = None
    if args.gloo_nice:
        watcher = threading.Thread(target=renice_while, args=(proc, f"--out_dir={out_dir}", args.gloo_nice))
        watcher.start()
    try:
        _, err = proc.communicate(timeout=args.timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
        if watcher is not None:
            watcher.join()
    if proc.returncode == 0:
        return "ok"
    if "terminate called" in err or "exitcode  : -6" in err or "(SIGABRT)" in err:
        return "abort"
    print(f"run failed (exit {proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}", file=sys.stderr, flush=True)
    return "failed"


def commit_of(script: str) -> str | None:
    proc = subprocess.run(["git", "-C", os.path.dirname(script), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", os.path.dirname(script), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (proc.stdout.strip() + ("+changes" if dirty else "")) if proc.returncode == 0 else None


def main(argv: list[str]) -> int:
    args, extra = parse_args(argv)
    counts = {s: {"ok": 0, "abort": 0, "failed": 0} for s in args.scripts}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
    load_before, t0 = os.getloadavg()[0], time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="z2exit_") as work:
            cfg, data = write_data(work)
            for i in range(args.runs):
                for k, script in enumerate(args.scripts):
                    out_dir = os.path.join(work, f"run{i}_{k}")
                    verdict = run_once(command(script, cfg, data, out_dir, args.max_iters, extra), out_dir, args)
                    counts[script][verdict] += 1
                    print(f"run {i} {script}: {verdict}", file=sys.stderr, flush=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    env, load = environment(), [round(load_before, 2), round(os.getloadavg()[0], 2)]
    for script, c in counts.items():
        print(json.dumps({**env, "bench": "exit_abort", "train_py": script, "commit": commit_of(script),
                          "runs": args.runs, **c, "hogs": args.hogs, "gloo_nice": args.gloo_nice,
                          "max_iters": args.max_iters, "seconds": round(time.time() - t0), "load_1m": load}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
