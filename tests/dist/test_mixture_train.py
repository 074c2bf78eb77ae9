"""Pretraining on a mix through real train.py processes: chained SIGKILLs across a stage switch give the uninterrupted
run bitwise (1 process, 2 gloo ranks), a stage added on --resume continues exactly, a run resumes on another world
size at the same data position, and the per-source valid losses are the same for 1 process and 2 ranks."""
import json
import subprocess

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.support.runs import command, kill_after_checkpoint, make_mix_run, read_losses, start

ITERS = 14
COMMON = ["--attention_dropout=0", "--residual_dropout=0", f"--max_iters={ITERS}", "--save_interval=2",
          "--eval_interval=0"]


def run(nproc, args):
    proc = subprocess.run(command(nproc, args), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def data_metrics(out):
    return [{k: v for k, v in r.items() if k.startswith(("tokens/", "epoch/"))} for r in records(out) if "loss" in r]


def final_sampler(out):
    steps = sorted(p.name for p in (out / "ckpt").iterdir() if p.name.startswith("step_"))
    return json.loads((out / "ckpt" / steps[-1] / "trainer_state.json").read_text())["sampler"]


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2], ids=["one_process", "two_ranks"])
def test_chained_kills_across_a_stage_switch_give_the_uninterrupted_run(tmp_path, nproc):
    cfg, ref_args, ref_out = make_mix_run(tmp_path, "ref")
    _, args, out = make_mix_run(tmp_path, "killed")
    run(nproc, [cfg, *ref_args, *COMMON])
    proc = start(command(nproc, [cfg, *args, *COMMON]))
    kill_after_checkpoint(proc, out, 3)
    resume = [a for a in args if a.startswith("--out_dir")] + ["--resume"]
    for at in (6, 10):  # the stage switch (after step 7) falls between these kills
        proc = start(command(nproc, resume))
        kill_after_checkpoint(proc, out, at)
    run(nproc, resume)
    assert read_losses(out) == read_losses(ref_out)
    assert data_metrics(out) == data_metrics(ref_out)
    got, want = final_sampler(out), final_sampler(ref_out)
    assert got == want and got["stage_step"] == 7 and got["sources"]["a"]["epoch"] >= 2


@pytest.mark.slow
def test_a_stage_added_on_resume_continues_exactly(tmp_path):
    cfg, ref_args, ref_out = make_mix_run(tmp_path, "ref")
    _, args, out = make_mix_run(tmp_path, "added")
    run(1, [cfg, *ref_args, *COMMON])  # the stage from the start
    no_stage = [a for a in args if not a.startswith("--data_stages")]
    proc = start(command(1, [cfg, *no_stage, *COMMON]))
    kill_after_checkpoint(proc, out, 4)  # before step 7
    stage = next(a for a in args if a.startswith("--data_stages"))
    run(1, [f"--out_dir={out}", "--resume", stage])
    assert read_losses(out) == read_losses(ref_out)
    assert final_sampler(out) == final_sampler(ref_out)
    saved = json.loads((out / "exp_config.json").read_text())["config"]["data"]
    assert saved["data_stages"] == stage.split("=", 1)[1]


@pytest.mark.slow
def test_a_run_resumes_on_another_world_size_at_the_same_data_position(tmp_path):
    cfg, ref_args, ref_out = make_mix_run(tmp_path, "ref")
    _, args, out = make_mix_run(tmp_path, "resharded")
    run(1, [cfg, *ref_args, *COMMON])
    proc = start(command(2, [cfg, *args, *COMMON]))
    kill_after_checkpoint(proc, out, 4)
    run(1, [f"--out_dir={out}", "--resume"])
    assert final_sampler(out) == final_sampler(ref_out)
    assert data_metrics(out) == data_metrics(ref_out)  # every log line read the same samples of each source
    got, want = read_losses(out), read_losses(ref_out)
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-4)  # 2 ranks sum in another order


@pytest.mark.slow
def test_per_source_valid_losses_are_the_same_for_one_process_and_two_ranks(tmp_path):
    cfg, one_args, one_out = make_mix_run(tmp_path, "one")
    _, two_args, two_out = make_mix_run(tmp_path, "two")
    flags = ["--attention_dropout=0", "--residual_dropout=0", "--max_iters=4", "--eval_interval=2",
             "--eval_iters=3", "--data_stages=3:a:1,b:3"]
    run(1, [cfg, *one_args, *flags])
    run(2, [cfg, *two_args, *flags])

    def valid(out):
        return [(r["iter"], r["valid_loss"], r["valid/a"], r["valid/b"]) for r in records(out) if "valid_loss" in r]

    one, two = valid(one_out), valid(two_out)
    assert [r[0] for r in one] == [r[0] for r in two] == [2, 4]
    np.testing.assert_allclose([r[1:] for r in two], [r[1:] for r in one], rtol=1e-6)
    for it, loss, a, b in one:  # the mean weighted by the mix of the last step: 0.7/0.3, then 0.25/0.75
        wa = 0.7 if it <= 3 else 0.25
        assert loss == pytest.approx(wa * a + (1 - wa) * b, rel=1e-6)
