"""train.py under torchrun with 2 gloo ranks: same samples as 1 process, and bitwise resume after SIGKILL."""
import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT
from tests.support.runs import kill_when, make_run, read_losses, run_cli, start


def torchrun(nproc, args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            os.path.join(ROOT, "train.py"), *args]


def test_two_gloo_ranks_match_one_process_and_resume_bitwise(tmp_path):
    """GA=2 on 1 process and on 2 ranks see the same samples; a 2-rank run killed and resumed is bitwise equal."""
    cfg_file, args, out = make_run(tmp_path, "two")
    _, one_args, _ = make_run(tmp_path, "one")
    _, killed_args, killed_out = make_run(tmp_path, "two_killed")
    no_dropout = ["--attention_dropout=0", "--residual_dropout=0", "--max_iters=6"]
    one = run_cli([cfg_file, *one_args, *no_dropout])
    assert one.returncode == 0, one.stderr
    two = subprocess.run(torchrun(2, [cfg_file, *args, *no_dropout]), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    l1, l2 = read_losses(tmp_path / "one"), read_losses(out)
    assert [i for i, _ in l1] == [i for i, _ in l2]
    np.testing.assert_allclose([v for _, v in l1], [v for _, v in l2], rtol=1e-5)

    proc = start(torchrun(2, [cfg_file, *killed_args, *no_dropout]))
    kill_when(proc, killed_out, 3)
    resumed = subprocess.run(torchrun(2, [*killed_args, "--resume"]), cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_losses(killed_out) == l2


def test_valid_loss_is_the_same_for_one_process_and_two_ranks(tmp_path):
    """The validation pass covers the same windows for any number of ranks (split across them)."""
    cfg_file, args, out = make_run(tmp_path, "two_eval")
    _, one_args, one_out = make_run(tmp_path, "one_eval")
    flags = ["--attention_dropout=0", "--residual_dropout=0", "--max_iters=4", "--eval_interval=2", "--eval_iters=3"]
    assert run_cli([cfg_file, *one_args, *flags]).returncode == 0
    two = subprocess.run(torchrun(2, [cfg_file, *args, *flags]), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    def valid(o):
        return [json.loads(line)["valid_loss"] for line in (o / "metrics.jsonl").read_text().splitlines()
                if "valid_loss" in line]

    assert len(valid(one_out)) == 2
    np.testing.assert_allclose(valid(out), valid(one_out), rtol=1e-6)
