"""train.py's fault policy with real processes: the exit codes, a rejected --resume, NaN, SIGTERM, a full disk and a
read-only dir (injected here; the real ones are in test_disk_faults.py); and under monitor_process.py: a stopped
process, a sleeping rank and a loss spike are each recovered and the run completes, a persistent NaN stops it at
once (issue 18)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

import train
from tests.conftest import ROOT
from tests.support.runs import command, make_run, read_losses, run_cli, start
from utils import exit_codes as ec

MONITOR = [sys.executable, os.path.join(ROOT, "monitor_process.py"), "--backoff_s=0.1", "--poll_s=0.1",
           "--status_wait_s=2", "--kill_grace_s=20"]


def _steps(out):
    root = out / "ckpt"
    return sorted(p.name for p in root.iterdir() if p.name.startswith("step_")) if root.is_dir() else []


def test_a_rejected_resume_override_leaves_the_run_intact(tmp_path, capsys):
    cfg_file, args, out = make_run(tmp_path)
    assert train.main([cfg_file, *args, "--max_iters=2"]) == 0
    before = (out / "exp_config.json").read_bytes(), (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert train.main([*args, "--resume", "--n_layers=3"]) == ec.USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n_layers: checkpoint 2 vs now 3" in err[0], err
    assert ((out / "exp_config.json").read_bytes(), (out / "metrics.jsonl").read_bytes()) == before
    assert train.main([*args, "--resume", "--max_iters=3"]) == 0  # the plain resume still works


def test_a_resume_keeps_the_data_position_under_other_accumulation_and_refuses_another_batch_size(tmp_path, capsys):
    """--gradient_accumulation_steps (and the world size) may change on --resume: the position counts micro-batches of
    one global stream, so the run continues it, says so, and reads each micro-batch once. --batch_size may not."""
    cfg_file, args, out = make_run(tmp_path)
    common = ["--save_interval=2", "--eval_interval=0", "--sample_tokens=0"]
    assert train.main([cfg_file, *args, *common, "--max_iters=2", "--gradient_accumulation_steps=2"]) == 0
    capsys.readouterr()
    before = (out / "exp_config.json").read_bytes()
    assert train.main([*args, "--resume", "--batch_size=3"]) == ec.USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch_size=3 on --resume: the run's data position counts micro-batches made with " \
        "batch_size=4" in err[0] and "drop --batch_size" in err[0], err
    assert (out / "exp_config.json").read_bytes() == before and _steps(out) == ["step_000000002"]
    assert train.main([*args, "--resume", "--max_iters=4", "--gradient_accumulation_steps=4"]) == 0
    text = capsys.readouterr().out
    assert ("data: continuing at micro-batch 4 of the global stream (4 samples each); 1 rank(s) x 4 micro-batches "
            "per step (was 1 rank(s) x 2 per step): no sample is repeated or skipped") in text, text
    state = json.loads((out / "ckpt" / "step_000000004" / "trainer_state.json").read_text())
    assert state["consumed_micro_batches"] == 2 * 2 + 2 * 4 and state["gradient_accumulation_steps"] == 4


NAN_ARGS = ["--learning_rate=1e4", "--grad_clip=0", "--warmup_iters=0", "--max_iters=40", "--save_interval=2",
            "--max_skipped_steps=3"]


def test_a_persistent_nan_stops_with_code_3_and_keeps_finite_checkpoints(tmp_path):
    cfg_file, args, out = make_run(tmp_path)
    proc = run_cli([cfg_file, *args, *NAN_ARGS])
    assert proc.returncode == ec.NAN, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("stopped:")
    status = json.loads((out / "exit_status.json").read_text())
    assert status["code"] == ec.NAN
    assert _steps(out), "no finite checkpoint survived"
    for step in _steps(out) + ["best"] * (out / "ckpt" / "best").is_dir():
        weights = load_file(str(out / "ckpt" / step / "model.safetensors"))
        assert all(np.isfinite(v).all() for v in weights.values()), step
    skipped = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("skipped_steps", 0) > 0 for r in skipped) or "skipped" in proc.stdout


def test_the_monitor_stops_at_once_on_a_persistent_nan(tmp_path):
    cfg_file, args, out = make_run(tmp_path)
    mon = subprocess.run([*MONITOR, "--", *command(1, [cfg_file, *args, *NAN_ARGS])], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert mon.returncode == ec.NAN, mon.stderr[-2000:]
    log = (out / "monitor.log").read_text()
    assert "attempt 1 start" in log and "attempt 2" not in log and "stopping: exit code 3" in log, log


def _wait_iter(out, n, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if max((i for i, _ in read_losses(out)), default=0) >= n:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no iter {n} in {timeout} s")


def test_sigterm_saves_at_once_and_the_resume_is_exact(tmp_path):
    cfg_file, ref_args, ref_out = make_run(tmp_path, "ref")
    _, args, out = make_run(tmp_path, "term")
    common = ["--max_iters=14", "--save_interval=100", "--attention_dropout=0", "--residual_dropout=0"]
    assert run_cli([cfg_file, *ref_args, *common]).returncode == 0
    proc = start(command(1, [cfg_file, *args, *common]))
    _wait_iter(out, 4, proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # a second one changes nothing
    assert proc.wait(timeout=120) == ec.PREEMPTED, proc.stderr.read()
    stopped = _steps(out)
    assert len(stopped) == 1 and int(stopped[0][5:]) >= 4  # saved where it stopped, not at save_interval
    status = json.loads((out / "exit_status.json").read_text())
    assert status["code"] == ec.PREEMPTED and status["iter"] == int(stopped[0][5:])  # the real iteration
    assert run_cli([*args, "--resume"]).returncode == 0
    assert read_losses(out) == read_losses(ref_out)


@pytest.mark.slow
def test_ctrl_c_finishes_the_iteration_saves_and_says_how_to_resume(tmp_path):
    cfg_file, args, out = make_run(tmp_path)
    proc = start(command(1, [cfg_file, *args, "--max_iters=400", "--save_interval=1000"]))
    _wait_iter(out, 3, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == ec.PREEMPTED
    err = proc.stderr.read().decode()
    assert "Traceback" not in err and "Ctrl-C: finishing this iteration, then saving" in err, err
    assert f"continue with: python train.py --resume --out_dir={out}" in err.strip().splitlines()[-1], err
    (step,) = _steps(out)
    status = json.loads((out / "exit_status.json").read_text())
    assert status["code"] == ec.PREEMPTED and status["iter"] == int(step[5:]) >= 3


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_with_one_line(tmp_path):
    cfg_file, args, out = make_run(tmp_path)
    # rank 0 sleeps inside iteration 4 (before its forward), so both Ctrl-Cs land in the same iteration
    proc = start(command(1, [cfg_file, *args, "--max_iters=400", "--save_interval=2",
                             "--fault_injection=sleep:rank=0,iter=4,seconds=60"]))
    _wait_iter(out, 3, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    line = proc.stderr.readline().decode()
    while "Ctrl-C" not in line:
        line = proc.stderr.readline().decode()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == ec.INTERRUPTED
    err = proc.stderr.read().decode().strip().splitlines()
    assert "Traceback" not in "\n".join(err) and len(err) == 1, err
    assert err[0].startswith("stopped: interrupted by Ctrl-C at iter 3, without saving"), err
    assert _steps(out) == ["step_000000002"]  # the last checkpoint is kept, nothing newer was written
    status = json.loads((out / "exit_status.json").read_text())
    assert status["code"] == ec.INTERRUPTED and status["iter"] == 3


def test_a_full_disk_is_one_line_and_the_run_resumes_when_space_is_back(tmp_path, capsys, monkeypatch):
    """The handler, with the fault injected where no tmpfs can be mounted; test_disk_faults.py causes the real one."""
    import errno

    import utils.checkpoint as ck

    cfg_file, args, out = make_run(tmp_path)
    real = ck._write_model

    def full_at_step_4(tmp, state):
        if tmp.name.startswith(".tmp-step_000000004"):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))
        real(tmp, state)

    monkeypatch.setattr(ck, "_write_model", full_at_step_4)
    assert train.main([cfg_file, *args]) == ec.USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on device while writing checkpoint step 4 to" in err[0], err
    assert "need about" in err[0]
    assert _steps(out) == ["step_000000002"] and not [p for p in (out / "ckpt").iterdir() if ".tmp" in p.name]
    monkeypatch.setattr(ck, "_write_model", real)
    assert train.main([*args, "--resume"]) == 0
    assert _steps(out) == ["step_000000006", "step_000000008"]


def test_a_read_only_out_dir_fails_at_start_up(tmp_path, capsys, monkeypatch):
    """An out_dir without write permission (root has it everywhere, hence injected); test_disk_faults.py mounts a
    real read-only one."""
    cfg_file, args, out = make_run(tmp_path)
    out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(out) else real(p, mode))
    assert train.main([cfg_file, *args]) == ec.USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not writable" in err[0] and list(out.iterdir()) == [], err


@pytest.mark.slow
def test_a_stopped_process_is_detected_and_the_run_completes(tmp_path):
    """SIGSTOP freezes the run: its heartbeat goes stale, the monitor kills and resumes it."""
    cfg_file, args, out = make_run(tmp_path)
    # the stop may land in a save (every 2 steps here): each section's timeout is short
    timeouts = ["--hang_timeout_s=10", "--save_timeout_s=10", "--startup_timeout_s=60"]
    mon = subprocess.Popen([*MONITOR, *timeouts, "--", *command(1, [cfg_file, *args, "--max_iters=40"])],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and max((i for i, _ in _losses_or_empty(out)), default=0) < 3:
        time.sleep(0.1)
    os.kill(json.loads((out / "heartbeat.json").read_text())["pid"], signal.SIGSTOP)
    _, err = mon.communicate(timeout=300)
    assert mon.returncode == 0, err[-2000:]
    log = (out / "monitor.log").read_text()
    assert "hang" in log.lower() and "--resume" in log, log
    assert [i for i, _ in read_losses(out)] == list(range(1, 41))


def _losses_or_empty(out):
    try:
        return read_losses(out)
    except (FileNotFoundError, ValueError):
        return []


@pytest.mark.slow
def test_a_sleeping_rank_times_out_and_the_monitor_resumes_the_run(tmp_path):
    cfg_file, args, out = make_run(tmp_path)
    run = command(2, [cfg_file, *args, "--max_iters=10", "--dist_timeout_s=5",
                      "--fault_injection=sleep:rank=1,iter=5,seconds=120"])
    mon = subprocess.run([*MONITOR, "--", *run], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert mon.returncode == 0, mon.stderr[-3000:]
    log = (out / "monitor.log").read_text()
    assert "--resume" in log, log
    assert [i for i, _ in read_losses(out)][-1] == 10


@pytest.mark.slow
def test_a_loss_spike_is_rolled_back_past_its_data(tmp_path):
    cfg_file, args, out = make_run(tmp_path)
    run = command(1, [cfg_file, *args, "--max_iters=44", "--save_interval=4", "--eval_interval=0",
                      "--spike_rollback", "--spike_factor=1.5", "--spike_patience=3",
                      "--fault_injection=spike:from=30,to=40"])
    mon = subprocess.run([*MONITOR, "--", *run], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert mon.returncode == 0, mon.stderr[-3000:]
    log = (out / "monitor.log").read_text()
    assert "roll" in log.lower(), log
    state = json.loads((out / "ckpt" / "step_000000044" / "trainer_state.json").read_text())
    (skip_iter, skip_from, skip_to), = state["data_skips"]
    assert skip_iter == 28 and skip_from == 28 * 2 and skip_to == 32 * 2  # ga 2: the spike's iterations 30-32
    assert state["consumed_micro_batches"] == 44 * 2 + (skip_to - skip_from)
    losses = dict(read_losses(out))
    assert max(losses[i] for i in range(29, 45)) < 1.5 * np.median([losses[i] for i in range(9, 29)])


def test_under_torchrun_a_config_error_is_printed_once_and_recorded(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(command(2, ["--batchsize=3", f"--out_dir={out}", "--device=cpu"]), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did you mean --batch_size" in errors[0], proc.stderr[-2000:]
    # torchrun's agent exits 1 whatever the worker's code: the real one is in exit_status.json
    assert json.loads((out / "exit_status.json").read_text())["code"] == ec.USER_ERROR


@pytest.mark.slow
def test_a_killed_torchrun_agent_leaves_no_worker_behind_and_the_run_resumes(tmp_path):
    """torchrun's workers live in sessions of their own: when their agent is SIGKILLed they keep running. The
    monitor adopts them (a subreaper), kills them, and resumes the run once; it ends with every iteration."""
    from utils.proctree import descendants

    cfg_file, args, out = make_run(tmp_path)
    mon = subprocess.Popen([*MONITOR, "--", *command(2, [cfg_file, *args, "--max_iters=60", "--save_interval=5"])],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and max((i for i, _ in _losses_or_empty(out)), default=0) < 6:
        time.sleep(0.1)
    agent = [p for p in descendants(mon.pid) if b"torch.distributed.run" in open(f"/proc/{p}/cmdline", "rb").read()]
    workers = [p for p in descendants(agent[0])]
    os.kill(agent[0], signal.SIGKILL)
    _, err = mon.communicate(timeout=400)
    assert mon.returncode == 0, err[-2000:]
    assert "left behind" in (out / "monitor.log").read_text()
    assert all(not os.path.exists(f"/proc/{p}") for p in workers)
    assert [i for i, _ in read_losses(out)][-1] == 60


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(node_rank: int, port: int, args: list[str]):
    """One "node": a torchrun agent with 2 gloo workers in a c10d rendezvous of 2 nodes (scripts/multinode.sh)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2", "--rdzv_backend=c10d",
           f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=z2test", "--max_restarts=0",
           f"--node_rank={node_rank}", os.path.join(ROOT, "train.py"), *args]
    return start(cmd)


@pytest.mark.slow
def test_two_nodes_on_one_host_lose_a_node_resume_and_match_one_node(tmp_path):
    from tests.support.runs import kill_run

    cfg_file, ref_args, ref_out = make_run(tmp_path, "ref")
    _, args, out = make_run(tmp_path, "nodes")
    flags = ["--attention_dropout=0", "--residual_dropout=0", "--gradient_accumulation_steps=4", "--max_iters=12",
             "--save_interval=2", "--eval_interval=0", "--dist_timeout_s=10"]
    ref = subprocess.run(command(4, [cfg_file, *ref_args, *flags]), cwd=ROOT, capture_output=True, text=True,
                         timeout=400)
    assert ref.returncode == 0, ref.stderr[-2000:]
    port = _free_port()
    nodes = [_node(r, port, [cfg_file, *args, *flags]) for r in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "ckpt" / "step_000000004" / "COMPLETE").exists():
        assert all(n.poll() is None for n in nodes), [n.communicate()[1][-1500:] for n in nodes]
        time.sleep(0.1)
    kill_run(nodes[1])  # node 1 dies; node 0's next collective fails within --dist_timeout_s
    assert nodes[0].wait(timeout=120) != 0
    kill_run(nodes[0])
    port = _free_port()
    nodes = [_node(r, port, [*args, "--resume"]) for r in (0, 1)]
    for n in nodes:
        assert n.wait(timeout=400) == 0, n.stderr.read()[-2000:]
    assert read_losses(out) == read_losses(ref_out)
