"""monitor_process.py with real processes: a fake training run (FAKE) plays each way a run can end, through the
real heartbeat and exit-status APIs, and the tests check what the monitor does with it."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import monitor_process
from monitor_process import Attempt, Monitor, parse_args
from utils import exit_codes as ec
from utils.run_status import ExitStatus, SpikeWindow

ROOT = Path(__file__).resolve().parents[2]

# A fake training run. argv: <scratch> <mode> [train args...]. It appends its train args to <scratch>/attempts.txt
# and its TORCH_ELASTIC_SHUTDOWN_TIMEOUT to <scratch>/env.txt; with --out_dir=RUN it creates RUN (as train.py
# does) and beats RUN/heartbeat.json. Modes:
#   exit:N         exit N at once
#   crash          exit 1 unless --resume, then exit 0
#   hang:SECTION   beat SECTION, then hang (exit 0 under --resume); hang:none never beats
#   hang_group     start a grandchild `sleep`, ignore SIGTERM, beat, hang (exit 0 under --resume)
#   long_save      beat checkpoint, take 2 s "saving", beat step, exit 0
#   sigstop        beat step, then SIGSTOP itself (exit 0 under --resume)
#   preempt        beat until SIGTERM; then "save" (0.5 s, a checkpoint), write PREEMPTED status, exit 5
#   preempt_self   write a checkpoint and a PREEMPTED status, exit 5 (exit 0 under --resume)
#   progress:K     write a new checkpoint and crash, until the K-th attempt, which exits 0
#   torchrun_user  write exit status 2 ("unknown key --lr"), exit 1 as torchrun's agent would
#   disk_full      reserve the exit status's space (as train.py does), fill RUN's disk to its last byte, write exit
#                  status 2 there, exit 1 as torchrun's agent would
#   beat_on_full_disk  beat, fill RUN's disk to its last byte, beat every 0.1 s for 3 s, exit 0
#   spike          write a SPIKE status (iters 25..30, data 100..120), exit 1
#   spike:moving   the same, 10 iters (40 micro-batches) later in each attempt
FAKE = r"""
import os, signal, subprocess, sys, time
from pathlib import Path
from utils import exit_codes as ec
from utils.heartbeat import Heartbeat
from utils.run_status import SpikeWindow, write_exit_status

scratch, mode, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
with open(scratch / "attempts.txt", "a") as fh:
    fh.write(" ".join(args) + "\n")
(scratch / "env.txt").write_text(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", ""))
n_attempts = len((scratch / "attempts.txt").read_text().splitlines())
run = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("--out_dir=")), scratch)
run.mkdir(parents=True, exist_ok=True)
hb = Heartbeat(run / "heartbeat.json")
resumed = "--resume" in args

def checkpoint(step):
    d = run / "ckpt" / f"step_{step:09d}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "COMPLETE").write_text("{}")

name, _, arg = mode.partition(":")
if name == "exit":
    sys.exit(int(arg))
if resumed and name in ("crash", "hang", "hang_group", "sigstop", "preempt_self"):
    sys.exit(0)
if name == "crash":
    sys.exit(1)
if name == "hang":
    if arg != "none":
        hb.beat(7, section=arg)
    time.sleep(600)
if name == "hang_group":
    child = subprocess.Popen(["sleep", "60"])
    (scratch / "grandchild.pid").write_text(str(child.pid))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    hb.beat(7)
    time.sleep(600)
if name == "long_save":
    hb.beat(7, section="checkpoint")
    time.sleep(2.0)
    hb.beat(7, section="step")
    sys.exit(0)
if name == "sigstop":
    hb.beat(7)
    os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(600)
if name == "preempt":
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    (scratch / "started").write_text("")
    while not stop:
        hb.beat(7)
        time.sleep(0.02)
    time.sleep(0.5)
    checkpoint(7)
    (scratch / "saved").write_text("")
    write_exit_status(run, ec.PREEMPTED, "SIGTERM: saved at iter 7", 7)
    sys.exit(ec.PREEMPTED)
if name == "preempt_self":
    checkpoint(7)
    write_exit_status(run, ec.PREEMPTED, "SIGTERM: saved at iter 7", 7)
    sys.exit(ec.PREEMPTED)
if name == "progress":
    if n_attempts >= int(arg):
        sys.exit(0)
    checkpoint(10 * n_attempts)
    sys.exit(1)
def fill_disk():
    st = os.statvfs(run)
    fd = os.open(run / "filler", os.O_WRONLY | os.O_CREAT)
    os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize)
    os.close(fd)

if name == "beat_on_full_disk":
    hb.beat(1)
    fill_disk()
    for i in range(30):
        time.sleep(0.1)
        hb.beat(2 + i, force=True)
    sys.exit(0)
if name == "disk_full":
    from utils.run_status import reserve_space
    reserve_space(run)
    fill_disk()
    write_exit_status(run, ec.USER_ERROR, "no space left on device while writing checkpoint step 4 to RUN/ckpt", 4)
    sys.exit(1)
if name == "torchrun_user":
    write_exit_status(run, ec.USER_ERROR, "unknown key --lr; did you mean --learning_rate?", 0)
    sys.exit(1)
if name == "spike":
    k = 10 * (n_attempts - 1) if arg == "moving" else 0
    write_exit_status(run, ec.SPIKE, "loss 9.1 > 3 x median 2.2 for 6 steps", 30 + k,
                      spike=SpikeWindow(start_iter=25 + k, end_iter=30 + k, consumed_start=100 + 4 * k,
                                        consumed_end=120 + 4 * k))
    sys.exit(1)
sys.exit(99)
"""


def _monitor_cmd(scratch, mode, opts, extra):
    fake = scratch / "fake_train.py"
    fake.write_text(FAKE)
    if not any(a.startswith("--out_dir=") for a in extra):  # FAKE beats <scratch>/heartbeat.json
        opts = [f"--heartbeat={scratch / 'heartbeat.json'}", *opts]
    return [sys.executable, str(ROOT / "monitor_process.py"), "--backoff_s=0.05", "--poll_s=0.05",
            "--status_wait_s=0", "--kill_grace_s=2", *opts,
            "--", sys.executable, str(fake), str(scratch), mode, *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


def _monitor(scratch, mode, *opts, extra=()):
    cmd = _monitor_cmd(scratch, mode, opts, extra)
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30)


def _attempts(scratch):
    return (scratch / "attempts.txt").read_text().splitlines()


def _lines(text, needle):
    return [line for line in text.splitlines() if needle in line]


def _checkpoint(run, step, consumed=None):
    """A step dir that utils.checkpoint verifies: model.safetensors and trainer_state.json listed in COMPLETE."""
    d = run / "ckpt" / f"step_{step:09d}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights %d" % step)
    (d / "trainer_state.json").write_text(json.dumps({"iter": step, "consumed_micro_batches": consumed}))
    files = {p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(d.iterdir())}
    (d / "COMPLETE").write_text(json.dumps({"format": 1, "step": step, "files": files}))
    return d


# -- restarts and stops by exit code -------------------------------------------------------------------------


def test_crash_is_retried_with_backoff_and_resume_and_logged(tmp_path):
    run = tmp_path / "run"  # train.py creates it: the monitor's first lines wait for it
    res = _monitor(tmp_path, "crash", "--max_restarts=1", extra=[f"--out_dir={run}"])
    assert res.returncode == 1, res.stderr
    # no checkpoint yet: the restart reruns the original command
    assert _attempts(tmp_path) == [f"--out_dir={run}", f"--out_dir={run}"]
    assert "no complete checkpoint" in res.stderr
    _checkpoint(run, 10)
    (tmp_path / "attempts.txt").unlink()
    res = _monitor(tmp_path, "crash", "--max_restarts=3", extra=[f"--out_dir={run}"])
    assert res.returncode == 0, res.stderr
    assert _attempts(tmp_path) == [f"--out_dir={run}", f"--out_dir={run} --resume"]
    assert "exit code 1 (CRASH" in res.stderr and "restart 1/3 in 0.05s" in res.stderr
    assert f"on {run}/heartbeat.json" in res.stderr  # the default heartbeat path
    log = (run / "monitor.log").read_text()
    for needle in ("supervising", "attempt 1 start:", "attempt 1 exited: exit code 1", "restart 1/3",
                   "attempt 2 start:", "--resume", "finished with exit code 0"):
        assert needle in log, needle
    assert all(line.startswith("[monitor ") and line[-1] != " " for line in log.splitlines())
    assert log.count("supervising") == 2  # appended, never truncated; the first lines waited for run/


def test_gives_up_after_max_restarts(tmp_path):
    res = _monitor(tmp_path, "exit:1", "--max_restarts=2", "--hang_timeout_s=0")
    assert res.returncode == 1
    assert _attempts(tmp_path) == ["", "--resume", "--resume"]  # --resume appended once, not per restart
    assert "giving up" in res.stderr and "max_restarts=2" in res.stderr


def test_progress_resets_the_failure_count(tmp_path):
    run = tmp_path / "run"
    res = _monitor(tmp_path, "progress:4", "--max_restarts=1", extra=[f"--out_dir={run}"])
    assert res.returncode == 0, res.stderr
    assert len(_attempts(tmp_path)) == 4 and res.stderr.count("restart 1/1") == 3


@pytest.mark.parametrize("mode, code, why", [
    ("exit:2", 2, "exit code 2 (USER_ERROR: config or data error)"),
    ("exit:3", 3, "exit code 3 (NAN: the loss stayed non-finite)"),
    ("exit:126", 126, "exit code 126 (CANNOT_EXECUTE"),
    ("exit:127", 127, "exit code 127 (NOT_FOUND"),
    ("torchrun_user", 2, "exit code 2 (USER_ERROR: config or data error): unknown key --lr; did you mean"),
])
def test_codes_that_only_repeat_stop_at_once(tmp_path, mode, code, why):
    run = tmp_path / "run"
    _checkpoint(run, 10)  # a restart could resume: the monitor still must not
    res = _monitor(tmp_path, mode, "--max_restarts=5", "--backoff_s=30", extra=[f"--out_dir={run}"])
    assert res.returncode == code, res.stderr
    assert _attempts(tmp_path) == [f"--out_dir={run}"]
    stop = _lines(res.stderr, "stopping:")
    assert len(stop) == 1 and why in stop[0] and "a restart would fail the same way" in stop[0], res.stderr
    if mode == "torchrun_user":
        assert "(process exit code 1)" in res.stderr


def test_command_that_cannot_start_is_not_retried(tmp_path):
    cmd = [sys.executable, str(ROOT / "monitor_process.py"), "--poll_s=0.05", "--",
           str(tmp_path / "no_such_program"), f"--out_dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30)
    assert res.returncode == 127
    assert len(_lines(res.stderr, "attempt")) == 2 and "--resume" not in res.stderr  # start, cannot start
    assert "stopping: exit code 127 (NOT_FOUND" in res.stderr


def test_preempted_on_its_own_resumes_at_once(tmp_path):
    run = tmp_path / "run"
    res = _monitor(tmp_path, "preempt_self", "--max_restarts=0", "--backoff_s=60", extra=[f"--out_dir={run}"])
    assert res.returncode == 0, res.stderr
    assert _attempts(tmp_path) == [f"--out_dir={run}", f"--out_dir={run} --resume"]
    assert "preempted and saved: resuming at once (not counted as a failure)" in res.stderr


def test_preempted_without_a_checkpoint_counts_as_a_failure(tmp_path):
    res = _monitor(tmp_path, "exit:5", "--max_restarts=1", extra=[f"--out_dir={tmp_path / 'run'}"])
    assert res.returncode == 5 and len(_attempts(tmp_path)) == 2
    assert "restart 1/1" in res.stderr and "giving up" in res.stderr


# -- signals to the monitor ----------------------------------------------------------------------------------


def _sigterm_once_started(cmd, tmp_path, start_s: float, stop_s: float):
    """Start the monitor, SIGTERM it once the fake run has started; (the finished process, its stderr)."""
    mon = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + start_s
    while not (tmp_path / "started").exists() and time.time() < deadline:
        time.sleep(0.02)
    mon.send_signal(signal.SIGTERM)
    return mon, mon.communicate(timeout=stop_s)[1]


@pytest.mark.slow
def test_sigterm_is_forwarded_and_the_run_gets_its_grace_to_save(tmp_path):
    run = tmp_path / "run"
    cmd = _monitor_cmd(tmp_path, "preempt", ["--kill_grace_s=10"], [f"--out_dir={run}"])
    mon, err = _sigterm_once_started(cmd, tmp_path, start_s=20, stop_s=30)
    assert mon.returncode == ec.PREEMPTED, err
    assert (tmp_path / "saved").exists() and len(_attempts(tmp_path)) == 1
    assert "the monitor got SIGTERM" in err and "SIGKILL after 10s" in err and "no exit" not in err
    assert "stopped by SIGTERM; the run saved its state" in err
    assert (tmp_path / "env.txt").read_text() == "9"  # torchrun's agent gets 90% of the grace


@pytest.mark.slow
def test_sigterm_through_torchrun_reaches_the_worker_and_its_exit_status(tmp_path):
    """torchrun's agent exits 1 and puts its workers in sessions of their own: the SIGTERM must still reach the
    worker through the agent, and the real code must come from exit_status.json."""
    run = tmp_path / "run"
    cmd = _monitor_cmd(tmp_path, "preempt", ["--kill_grace_s=20"], [f"--out_dir={run}"])
    split = cmd.index("--") + 1
    cmd[split:split + 1] = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--max_restarts=0"]
    mon, err = _sigterm_once_started(cmd, tmp_path, start_s=60, stop_s=60)
    assert mon.returncode == ec.PREEMPTED, err
    assert "exit code 5 (PREEMPTED: preempted (SIGTERM or Ctrl-C) and saved) after" in err and "(process exit code 1)" in err
    assert (tmp_path / "saved").exists()


def test_second_sigint_kills_at_once(tmp_path):
    cmd = _monitor_cmd(tmp_path, "hang_group", ["--kill_grace_s=60"], [])
    mon = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (tmp_path / "grandchild.pid").exists() and time.time() < deadline:
        time.sleep(0.02)
    mon.send_signal(signal.SIGINT)
    time.sleep(0.3)
    mon.send_signal(signal.SIGINT)
    _, err = mon.communicate(timeout=20)
    assert mon.returncode == 128 + signal.SIGINT, err
    assert "second SIGINT: sending SIGKILL" in err and "stopped by SIGINT" in err


# -- hangs, by section ---------------------------------------------------------------------------------------

_LONG = "100"


@pytest.mark.slow
@pytest.mark.parametrize("section, flag", [
    ("none", "--startup_timeout_s"),
    ("startup", "--startup_timeout_s"),
    ("step", "--hang_timeout_s"),
    ("eval", "--hang_timeout_s"),
    ("checkpoint", "--save_timeout_s"),
])
def test_hang_in_each_section_uses_its_timeout(tmp_path, section, flag):
    timeouts = {f: _LONG for f in ("--startup_timeout_s", "--hang_timeout_s", "--save_timeout_s")}
    timeouts[flag] = "0.5"
    res = _monitor(tmp_path, f"hang:{section}", "--max_restarts=1", *(f"{k}={v}" for k, v in timeouts.items()))
    assert res.returncode == 0, res.stderr
    assert _attempts(tmp_path) == ["", "--resume"]
    (hang,) = _lines(res.stderr, "stopping attempt")
    assert f"{flag}=0.5" in hang
    assert ("no heartbeat yet" in hang) if section == "none" else (f"in {section} for" in hang and "iter 7" in hang)


@pytest.mark.slow
def test_a_long_save_under_its_own_timeout_is_not_killed(tmp_path):
    res = _monitor(tmp_path, "long_save", "--max_restarts=1", "--hang_timeout_s=0.5", "--save_timeout_s=20")
    assert res.returncode == 0, res.stderr
    assert _attempts(tmp_path) == [""] and "hang" not in res.stderr.replace("hang timeouts", "")


@pytest.mark.slow
def test_hang_kills_the_whole_group_and_resumes(tmp_path):
    res = _monitor(tmp_path, "hang_group", "--max_restarts=1", "--hang_timeout_s=1.0", "--kill_grace_s=0.3")
    assert res.returncode == 0, res.stderr
    assert _attempts(tmp_path) == ["", "--resume"]
    assert "hang: no heartbeat for" in res.stderr and "iter 7" in res.stderr and "SIGKILL" in res.stderr
    pid = int((tmp_path / "grandchild.pid").read_text())
    deadline = time.time() + 5
    while time.time() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid), "the attempt's whole process group must be killed"


@pytest.mark.slow
def test_sigstopped_run_is_detected_and_restarted(tmp_path):
    res = _monitor(tmp_path, "sigstop", "--max_restarts=1", "--hang_timeout_s=0.5")
    assert res.returncode == 0, res.stderr
    assert _attempts(tmp_path) == ["", "--resume"]
    assert "exited: exit code 143 (killed by SIGTERM)" in res.stderr  # SIGCONT let it act on the SIGTERM


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- loss-spike rollback -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_spike_rolls_back_before_the_spike_and_skips_its_data(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 10, consumed=40)
    _checkpoint(run, 20, consumed=80)
    _checkpoint(run, 30, consumed=120)  # saved inside the spike window (iters 25..30)
    res = _monitor(tmp_path, "spike:moving", "--max_rollbacks=2", "--max_restarts=0", "--backoff_s=60",
                   extra=["train.py", "configs/x.py", f"--out_dir={run}"])
    assert res.returncode == ec.SPIKE, res.stderr
    rollback = f"train.py --out_dir={run} --resume --resume_step=20 --skip_data_to="
    assert _attempts(tmp_path) == [f"train.py configs/x.py --out_dir={run}", rollback + "120", rollback + "160"]
    moved = run / "rolled_back" / "rollback_1" / "step_000000030"
    assert moved.is_dir() and not (run / "ckpt" / "step_000000030").exists()
    log = (run / "monitor.log").read_text()
    assert f"moved {run / 'ckpt' / 'step_000000030'}" in log
    assert ("rollback 1/2: loss spike at iters 25..30 (loss 9.1 > 3 x median 2.2 for 6 steps); resuming from "
            "step 20, skipping the data from data position 80 to 120 (spike window 100..120)") in log
    assert "rollback 2/2: loss spike at iters 35..40" in log
    (stop,) = _lines(log, "stopping:")
    assert "loss spike at iters 45..50, and max_rollbacks=2 rollback(s) are used up" in stop


def _spike_attempt(started):
    spike = SpikeWindow(start_iter=25, end_iter=30, consumed_start=100, consumed_end=120)
    status = ExitStatus(code=ec.SPIKE, reason="spike", iter=30, time=started, pid=1, spike=spike)
    return Attempt(1, started, ec.SPIKE, "spike", status)


def test_rollback_skips_a_corrupt_checkpoint_and_keeps_its_flags_until_a_new_save(tmp_path, capsys):
    run = tmp_path / "run"
    _checkpoint(run, 10, consumed=40)
    (_checkpoint(run, 20, consumed=80) / "model.safetensors").write_bytes(b"rotten %d" % 20)
    mon = Monitor(["train.py", f"--out_dir={run}", "--resume_step=5"], _opts(max_rollbacks=2))
    cmd, delay = mon.roll_back(_spike_attempt(time.time()))
    assert delay == 0 and cmd == ["train.py", f"--out_dir={run}", "--resume", "--resume_step=10",
                                  "--skip_data_to=120"]
    assert mon.resume_command() == cmd  # a crash before the rollback run saved: roll back again
    time.sleep(0.01)
    (run / "ckpt" / "step_000000012").mkdir()
    (run / "ckpt" / "step_000000012" / "COMPLETE").write_text("{}")
    assert mon.resume_command() == ["train.py", f"--out_dir={run}", "--resume"]
    shutil.rmtree(run / "ckpt" / "step_000000012")
    assert mon.roll_back(_spike_attempt(time.time())) == ec.SPIKE  # the same step and skip: the same run
    err = capsys.readouterr().err
    assert "rollback: skipping" in err and "step_000000020: it does not verify" in err
    assert "already tried" in err


def test_rollback_without_a_checkpoint_before_the_spike_stops(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 25)
    mon = Monitor(["train.py", f"--out_dir={run}"], _opts())
    assert mon.roll_back(_spike_attempt(time.time())) == ec.SPIKE
    assert (run / "ckpt" / "step_000000025").is_dir()  # stopping moves nothing
    no_window = Attempt(1, time.time(), ec.SPIKE)
    assert mon.roll_back(no_window) == ec.SPIKE


# -- command line --------------------------------------------------------------------------------------------


def _opts(**kw):
    opts, _ = parse_args([f"--{k}={v}" for k, v in kw.items()] + ["--", "x"])
    return opts


def test_resume_command_for_train_py(tmp_path):
    run = tmp_path / "run"
    cmd = ["torchrun", "--nproc_per_node=2", "train.py", "configs/z2all_1b.py", f"--out_dir={run}", "--seed=3"]
    mon = Monitor(cmd, _opts())
    assert mon.opts.heartbeat == os.path.join(str(run), "heartbeat.json")
    assert mon.opts.log_file == os.path.join(str(run), "monitor.log")
    assert mon.resume_command() == cmd  # nothing to resume from yet: rerun as is
    (run / "ckpt" / "step_000000001").mkdir(parents=True)
    (run / "ckpt" / "step_000000001" / "COMPLETE").write_text("{}")
    assert mon.resume_command() == ["torchrun", "--nproc_per_node=2", "train.py", f"--out_dir={run}", "--seed=3",
                                    "--resume"]
    assert Monitor(cmd + ["--resume"], _opts()).resume_command()[-1] == "--resume"
    assert Monitor(cmd + ["--skip_data_to=9"], _opts()).resume_command()[-1] == "--resume"


def test_a_log_file_that_cannot_be_written_does_not_stop_the_monitor(tmp_path, capsys):
    mon = Monitor(["x"], _opts(log_file=tmp_path))  # a directory: open() fails
    mon.log("hello")
    mon.log("again")
    err = capsys.readouterr().err
    assert "hello" in err and "again" in err and err.count("cannot append to") == 1


def test_help_lists_every_option_with_its_default():
    res = subprocess.run([sys.executable, str(ROOT / "monitor_process.py"), "--help"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    for action in monitor_process.build_parser()._actions:
        if action.dest != "help":
            assert action.option_strings[0] in res.stdout
    text = " ".join(res.stdout.split())
    assert "(default: 600.0)" in text and "(default: <out_dir>/monitor.log)" in text


def test_cli_errors(capsys):
    assert monitor_process.main(["--max_restarts=2"]) == 2
    assert "after '--'" in capsys.readouterr().err
    assert monitor_process.main(["--max_restarts=-1", "--", "true"]) == 2
    assert "max_restarts must be >= 0" in capsys.readouterr().err
    assert monitor_process.main(["--bogus=1", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --bogus=1" in err
    with pytest.raises(ValueError, match="empty"):
        parse_args(["--"])
