"""Chained SIGKILLs: each resume continues from what the previous *resumed* process wrote (defect 1 of the
reliability issue). Every logged loss equals the uninterrupted run's and the final data position is exact."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.support.runs import make_run, read_losses, start

ITERS = 14
COMMON = ["--attention_dropout=0", "--residual_dropout=0", f"--max_iters={ITERS}", "--save_interval=2",
          "--eval_interval=0"]
CASES = {
    "one_process": (1, []),
    "two_ranks_zero1": (2, ["--use_distributed_optimizer", "--overlap_param_gather"]),
}


def command(nproc, args):
    if nproc == 1:
        return [sys.executable, os.path.join(ROOT, "train.py"), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            os.path.join(ROOT, "train.py"), *args]


def latest_step(out):
    root = out / "ckpt"
    steps = [int(p[5:]) for p in os.listdir(root) if p.startswith("step_") and (root / p / "COMPLETE").exists()] \
        if root.is_dir() else []
    return max(steps, default=0)


def kill_after_checkpoint(proc, out, step, timeout=180):
    """SIGKILL the run's process group once it has published a complete checkpoint at >= step.

    Waiting for a checkpoint (not a log line) makes sure every resumed process writes one of its own before
    it dies: the next resume then starts from what a resumed process saved."""
    deadline = time.time() + timeout
    while latest_step(out) < step:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it was killed: {proc.communicate()[1][-3000:]}")
        if time.time() > deadline:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def final_state(out):
    ckpts = sorted(p for p in os.listdir(out / "ckpt") if p.startswith("step_"))
    with open(out / "ckpt" / ckpts[-1] / "trainer_state.json") as f:
        return json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_chained_kills_give_the_uninterrupted_losses(tmp_path, case):
    nproc, extra = CASES[case]
    cfg_file, ref_args, ref_out = make_run(tmp_path, "ref")
    _, args, out = make_run(tmp_path, "killed")
    ref = subprocess.run(command(nproc, [cfg_file, *ref_args, *COMMON, *extra]), cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    kills = sorted(random.Random(case).sample(range(2, ITERS - 1), 4))  # increasing, seeded: reproducible
    proc = start(command(nproc, [cfg_file, *args, *COMMON, *extra]))
    kill_after_checkpoint(proc, out, kills[0])
    for at in kills[1:]:
        proc = start(command(nproc, [*args, "--resume"]))  # resumes what the previous resumed process wrote
        kill_after_checkpoint(proc, out, at)
    last = subprocess.run(command(nproc, [*args, "--resume"]), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-3000:]
    assert read_losses(out) == read_losses(ref_out)
    got, want = final_state(out), final_state(ref_out)
    assert got["consumed_micro_batches"] == want["consumed_micro_batches"] == ITERS * 2  # ga = 2 in the tiny config
    assert got["sampler"] == want["sampler"]
