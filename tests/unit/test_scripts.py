"""scripts/multinode.sh and scripts/slurm.sbatch: syntax, shellcheck (when installed) and the torchrun command
they compose (DRY_RUN=1), under Slurm (fake scontrol and srun on PATH) and without."""
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / "scripts" / "multinode.sh", ROOT / "scripts" / "slurm.sbatch"]
TRAIN = ["train.py", "configs/z2all_1b.py", "--out_dir=runs/a b"]
# The variables the scripts read: cleared, so the machine running the tests does not leak into them.
SETTINGS = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE", "RDZV_ID", "MONITOR_ARGS",
            "SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_GPUS_ON_NODE",
            "SLURM_SUBMIT_DIR")


def _run(script, args, path_dir=None, **env):
    base = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    if path_dir is not None:
        base["PATH"] = f"{path_dir}{os.pathsep}{base['PATH']}"
    return subprocess.run(["bash", str(script), *args], cwd=ROOT, env={**base, "DRY_RUN": "1", **env},
                          capture_output=True, text=True, timeout=30)


def _fake_slurm(tmp_path):
    """scontrol prints the allocation's hosts; srun drops its options and runs the task once, here."""
    (tmp_path / "scontrol").write_text('#!/usr/bin/env bash\n[[ "$1 $2" == "show hostnames" ]] && '
                                       'printf "gpu-node-07\\ngpu-node-08\\n"\n')
    (tmp_path / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == -* ]]; do shift; done\nexec "$@"\n')
    for name in ("scontrol", "srun"):
        (tmp_path / name).chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_syntax_and_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    res = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_multinode_command_with_given_settings():
    res = _run(SCRIPTS[0], TRAIN, NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="29600",
               NPROC_PER_NODE="8", RDZV_ID="exp7", MONITOR_ARGS="--max_restarts=20 --kill_grace_s=900")
    assert res.returncode == 0, res.stderr
    assert shlex.split(res.stdout) == [
        "python", str(ROOT / "monitor_process.py"), "--max_restarts=20", "--kill_grace_s=900", "--",
        "torchrun", "--nnodes=2", "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_endpoint=10.0.0.1:29600",
        "--rdzv_id=exp7", "--max_restarts=0", *TRAIN, "--auto_resume"]
    assert "node 1/2" in res.stderr


def test_slurm_job_resolves_the_master_on_the_node(tmp_path):
    fake = _fake_slurm(tmp_path)
    slurm = {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_ID": "4242", "SLURM_GPUS_ON_NODE": "4",
             "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_SUBMIT_DIR": str(ROOT)}
    res = _run(SCRIPTS[1], TRAIN, path_dir=fake, **slurm)
    assert res.returncode == 0, res.stderr
    cmd = shlex.split(res.stdout)
    assert cmd[cmd.index("--") + 1:] == [
        "torchrun", "--nnodes=2", "--nproc_per_node=4", "--rdzv_backend=c10d",
        "--rdzv_endpoint=gpu-node-07:29500", "--rdzv_id=4242", "--max_restarts=0", *TRAIN, "--auto_resume"]


@pytest.mark.parametrize("env, message", [
    ({"NNODES": "2", "NODE_RANK": "1"}, "NODE_RANK=1 needs MASTER_ADDR"),
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, "need 0 <= NODE_RANK < NNODES"),
    ({"NNODES": "two", "MASTER_ADDR": "h"}, "NNODES must be a whole number (got 'two')"),
])
def test_multinode_errors_are_one_line(env, message):
    res = _run(SCRIPTS[0], TRAIN, **env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    res = _run(SCRIPTS[0], [])
    assert res.returncode == 2 and "no training command" in res.stderr
