"""Chained SIGKILLs: each resume continues from what the previous *resumed* process wrote (defect 1 of the
reliability issue). Every logged loss equals the uninterrupted run's and the final data position is exact, for
pretraining on 1 process and on 2 gloo ranks with ZeRO-1, SFT with packing on 2 ranks, and DPO with the
precomputed reference log-probs, and PowerSGD on 2 ranks (its per-rank error feedback and Q in the checkpoint)."""
import json
import os
import random
import subprocess

import pytest

from tests.conftest import ROOT
from tests.support.finetune import make_finetune
from tests.support.runs import command, kill_after_checkpoint, kill_when, make_run, read_losses, start

ITERS = 14
COMMON = ["--attention_dropout=0", "--residual_dropout=0", f"--max_iters={ITERS}", "--save_interval=2",
          "--eval_interval=0"]
# name: (ranks, task, extra flags, gradient accumulation of its config)
CASES = {
    "one_process": (1, "pretrain", [], 2),
    "two_ranks_zero1": (2, "pretrain", ["--use_distributed_optimizer", "--overlap_param_gather"], 2),
    "sft_two_ranks_packed": (2, "sft", ["--gradient_accumulation_steps=2"], 2),
    "powersgd_two_ranks": (2, "pretrain", ["--comm_hook=powersgd", "--powersgd_rank=2", "--powersgd_start_iter=3"], 2),
    "dpo_precomputed_reference": (1, "dpo", ["--precompute_ref_logps"], 1),
}


def final_state(out):
    ckpts = sorted(p for p in os.listdir(out / "ckpt") if p.startswith("step_"))
    with open(out / "ckpt" / ckpts[-1] / "trainer_state.json") as f:
        return json.load(f)


def run_args(tmp_path, task: str, name: str) -> tuple[list[str], list[str], object]:
    """(first-run argv, resume argv, out_dir) of the case's run `name`."""
    if task == "pretrain":
        cfg_file, args, out = make_run(tmp_path, name)
        return [cfg_file, *args], args, out
    ft = make_finetune(tmp_path)
    out = tmp_path / name
    args = [f"--out_dir={out}"]
    return [ft["config"], f"--task_type={task}", f"--init_from={ft['init']}", f"--data_dir={ft[task]}", *args], args, out


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_chained_kills_give_the_uninterrupted_losses(tmp_path, case):
    nproc, task, extra, ga = CASES[case]
    ref_first, _, ref_out = run_args(tmp_path, task, "ref")
    first, resume, out = run_args(tmp_path, task, "killed")
    ref = subprocess.run(command(nproc, [*ref_first, *COMMON, *extra]), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    kills = sorted(random.Random(case).sample(range(2, ITERS - 1), 4))  # increasing, seeded: reproducible
    proc = start(command(nproc, [*first, *COMMON, *extra]))
    kill_after_checkpoint(proc, out, kills[0])
    for at in kills[1:]:
        proc = start(command(nproc, [*resume, "--resume"]))  # resumes what the previous resumed process wrote
        kill_after_checkpoint(proc, out, at)
    last = subprocess.run(command(nproc, [*resume, "--resume"]), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-3000:]
    assert read_losses(out) == read_losses(ref_out)
    got, want = final_state(out), final_state(ref_out)
    assert got["consumed_micro_batches"] == want["consumed_micro_batches"] == ITERS * ga
    assert got["sampler"] == want["sampler"]


@pytest.mark.slow
def test_a_kill_between_checkpoints_with_dropout_resumes_bitwise(tmp_path):
    """One SIGKILL at a random moment after iter 5 (between the checkpoints of iters 4 and 6, after the eval at 4),
    with dropout on: the resume restores every RNG and drops the log lines written after its checkpoint."""
    cfg_file, args, out = make_run(tmp_path, "killed")
    _, ref_args, ref_out = make_run(tmp_path, "ref")
    ref = subprocess.run(command(1, [cfg_file, *ref_args]), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = start(command(1, [cfg_file, *args]))
    kill_when(proc, out, 5)
    resumed = subprocess.run(command(1, [*args, "--resume"]), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_losses(out) == read_losses(ref_out)
