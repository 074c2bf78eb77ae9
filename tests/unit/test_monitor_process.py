"""monitor_process.py: restart on crash with --resume, hang detection through the heartbeat, give-up, CLI."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import monitor_process
from monitor_process import Monitor, parse_args

ROOT = Path(__file__).resolve().parents[2]

# A fake training run. argv: <out_dir> <mode> [--out_dir=...] [--resume]. Logs its argv to attempts.txt.
# mode crash: exit 3 unless --resume, then write "resumed" and exit 0. mode always_crash: exit 3.
# mode hang: start a grandchild `sleep`, ignore SIGTERM, beat once, hang; with --resume: exit 0.
FAKE = r"""
import json, os, signal, subprocess, sys, time
out, mode = sys.argv[1], sys.argv[2]
with open(os.path.join(out, "attempts.txt"), "a") as fh:
    fh.write(" ".join(sys.argv[3:]) + "\n")
with open(os.path.join(out, "heartbeat.json"), "w") as fh:
    json.dump({"time": time.time(), "iter": 7}, fh)
resumed = "--resume" in sys.argv
if mode == "crash" and resumed:
    open(os.path.join(out, "resumed"), "w").close()
    sys.exit(0)
if mode == "hang" and not resumed:
    child = subprocess.Popen(["sleep", "60"])
    open(os.path.join(out, "grandchild.pid"), "w").write(str(child.pid))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
sys.exit(0 if mode == "hang" else 3)
"""


def _monitor(tmp_path, mode, *opts, extra=()):
    cmd = [sys.executable, str(ROOT / "monitor_process.py"), "--backoff_s=0.05", "--poll_s=0.05", *opts,
           "--", sys.executable, "-c", FAKE, str(tmp_path), mode, *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def _attempts(tmp_path):
    return (tmp_path / "attempts.txt").read_text().splitlines()


def test_crash_then_resume_succeeds(tmp_path):
    (tmp_path / "ckpt" / "step_000000010").mkdir(parents=True)
    (tmp_path / "ckpt" / "step_000000010" / "COMPLETE").write_text("{}")
    res = _monitor(tmp_path, "crash", "--max_restarts=3", extra=[f"--out_dir={tmp_path}"])
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "resumed").exists()
    assert _attempts(tmp_path) == [f"--out_dir={tmp_path}", f"--out_dir={tmp_path} --resume"]
    assert "exited with code 3" in res.stderr and "restart 1/3" in res.stderr
    assert f"hang timeout 1800s on {tmp_path}/heartbeat.json" in res.stderr  # default heartbeat path


def test_gives_up_after_max_restarts(tmp_path):
    res = _monitor(tmp_path, "always_crash", "--max_restarts=2", "--hang_timeout_s=0")
    assert res.returncode == 3
    assert _attempts(tmp_path) == ["", "--resume", "--resume"]  # --resume appended once, not per restart
    assert "giving up" in res.stderr


def test_hang_is_killed_and_resumed(tmp_path):
    hb = tmp_path / "heartbeat.json"
    res = _monitor(tmp_path, "hang", "--max_restarts=1", "--hang_timeout_s=1.0", f"--heartbeat={hb}",
                   "--kill_grace_s=0.3")
    assert res.returncode == 0, res.stderr
    assert _attempts(tmp_path) == ["", "--resume"]
    assert "hang: nothing for" in res.stderr and "iter 7" in res.stderr and "SIGKILL" in res.stderr
    pid = int((tmp_path / "grandchild.pid").read_text())
    deadline = time.time() + 5
    while time.time() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid), "the attempt's whole process group must be killed"


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _opts(**kw):
    opts, _ = parse_args([f"--{k}={v}" for k, v in kw.items()] + ["--", "x"])
    return opts


def test_resume_command_for_train_py(tmp_path):
    run = tmp_path / "run"
    cmd = ["torchrun", "--nproc_per_node=2", "train.py", "configs/z2all_1b.py", f"--out_dir={run}", "--seed=3"]
    mon = Monitor(cmd, _opts())
    assert mon.opts.heartbeat == os.path.join(str(run), "heartbeat.json")
    assert mon.resume_command() == cmd  # nothing to resume from yet: rerun as is
    (run / "ckpt" / "step_000000001").mkdir(parents=True)
    (run / "ckpt" / "step_000000001" / "COMPLETE").write_text("{}")
    assert mon.resume_command() == ["torchrun", "--nproc_per_node=2", "train.py", f"--out_dir={run}", "--seed=3",
                                    "--resume"]
    assert Monitor(cmd + ["--resume"], _opts()).resume_command() == cmd + ["--resume"]


def test_cli_errors(capsys):
    assert monitor_process.main(["--max_restarts=2"]) == 2
    assert "after '--'" in capsys.readouterr().err
    assert monitor_process.main(["--max_restarts=-1", "--", "true"]) == 2
    assert "max_restarts must be >= 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="empty"):
        parse_args(["--"])
