"""train.py and monitor_process.py on real disk, permission and corruption faults (issue 27): a tmpfs that fills up
while the run trains, a full disk at start-up, a read-only --out_dir, a data dir and a checkpoint that cannot be
read, and checkpoints, shards and sample indexes damaged on disk. The runs are real: in this process where the
fault needs no other process, else real train.py, torchrun and monitor processes."""
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import train
from tests.conftest import ROOT
from tests.support.disks import (fill, needs_mount, needs_permissions, obey_permissions, read_only,  # noqa: F401
                                 tmpfs)
from tests.support.runs import command, make_run, read_losses, run_cli
from utils import exit_codes as ec

MONITOR = [sys.executable, os.path.join(ROOT, "monitor_process.py"), "--backoff_s=0.1", "--poll_s=0.1",
           "--status_wait_s=5", "--kill_grace_s=20"]
# rank 0 sleeps before iteration 13, so the disk is full (the watcher fills it once step 12 is saved) before the run
# logs iterations 13-24 (more than a page of metrics: tmpfs has room in a file's last page) and saves step 24
FILL_AFTER_STEP_12 = ["--max_iters=24", "--save_interval=12", "--eval_interval=0",
                      "--fault_injection=sleep:rank=0,iter=13,seconds=3"]


def _steps(out):
    root = out / "ckpt"
    return sorted(p.name for p in root.iterdir() if p.name.startswith("step_")) if root.is_dir() else []


def _temp_files(out):
    return [str(p) for p in out.rglob("*") if p.name.startswith(".tmp") or ".tmp-" in p.name]


def _fill_when(marker, disk, timeout=240):
    """Fill `disk` to its last byte as soon as `marker` exists (a thread); returns the filler's path holder."""
    filler = []

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline and not marker.exists():
            time.sleep(0.002)
        filler.append(fill(disk))

    threading.Thread(target=watch, daemon=True).start()
    return filler


@needs_mount
def test_a_disk_that_fills_while_training_is_one_line_exit_2_and_the_run_resumes(tmp_path, tmpfs, capsys):
    """The issue's case on a real tmpfs: the best-effort outputs warn once each and training goes on; the save of
    step 24 fails with one line, exit 2, no temp dir, step 12 kept; with space back, --resume finishes the run."""
    cfg_file, args, _ = make_run(tmp_path)
    disk = tmpfs(20)
    out = disk / "run"
    args = [a for a in args if not a.startswith("--out_dir")] + [f"--out_dir={out}"]
    filler = _fill_when(out / "ckpt" / "step_000000012" / "COMPLETE", disk)
    assert train.main([cfg_file, *args, *FILL_AFTER_STEP_12, "--tensorboard=True"]) == ec.USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and err[-1] == (
        f"error: no space left on device while writing checkpoint step 24 to {out / 'ckpt'} (need about 0.00 GB): the "
        f"earlier checkpoints are kept; free space there, then resume"), err
    warnings = err[:-1]
    for what in ("metrics", "the heartbeat", "TensorBoard events"):  # each reported once; the plot maybe too
        assert sum(f"no space left on device while writing {what} to" in w for w in warnings) == 1, (what, err)
    assert all(w.startswith("warning: ") and "the run goes on without it" in w for w in warnings), err
    assert _steps(out) == ["step_000000012"] and not _temp_files(out)
    assert not (out / "exit_status.json").exists()  # without torchrun the exit code itself tells the monitor
    os.unlink(filler[0])
    assert train.main([*args, "--resume"]) == 0
    assert _steps(out) == ["step_000000012", "step_000000024"]
    assert [i for i, _ in read_losses(out)] == list(range(1, 25))


@needs_mount
def test_a_full_disk_at_start_up_names_the_run_config(tmp_path, tmpfs, capsys):
    cfg_file, args, _ = make_run(tmp_path)
    disk = tmpfs(1)
    out = disk / "run"
    fill(disk)
    assert train.main([cfg_file, *[a for a in args if not a.startswith("--out_dir")], f"--out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: no space left on device while writing the run config to {out / 'exp_config.json'}: "
                       f"free space there or choose another directory"), err
    assert not out.exists() or os.listdir(out) == []  # no temp file


@needs_mount
def test_a_full_disk_at_start_up_names_the_tokenizer(tmp_path, tmpfs, capsys):
    from tests.support.finetune import make_finetune

    ft = make_finetune(tmp_path)
    disk = tmpfs(1)
    out = disk / "run"
    argv = [ft["config"], "--task_type=sft", f"--init_from={ft['init']}", f"--data_dir={ft['sft']}",
            f"--out_dir={out}", "--max_iters=2"]
    fill(disk, leave=4096)  # exp_config.json fits, the tokenizer does not
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: no space left on device while writing the tokenizer to {out / 'tokenizer'}: free "
                       f"space there or choose another directory"), err
    assert sorted(os.listdir(out)) == ["exp_config.json"]  # no .tmp-tokenizer-* left


@needs_mount
def test_a_read_only_out_dir_fails_at_start_up(tmp_path, read_only, capsys):
    cfg_file, args, out = make_run(tmp_path)
    out.mkdir()
    read_only(out)
    assert train.main([cfg_file, *args]) == ec.USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (f"error: {out} is not writable (read-only or no permission); choose another "
                                        f"--out_dir or fix its permissions"), err


@pytest.mark.parametrize("damage", ["flip_model_middle", "truncate_optim_shard"])
def test_a_corrupted_checkpoint_is_skipped_for_the_previous_one_with_one_warning(tmp_path, capsys, damage):
    cfg_file, args, out = make_run(tmp_path)
    assert train.main([cfg_file, *args, "--max_iters=4", "--eval_interval=0"]) == 0
    newest = out / "ckpt" / "step_000000004"
    if damage == "flip_model_middle":
        path = newest / "model.safetensors"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        why = "model.safetensors sha256 mismatch (corrupted)"
    else:
        path = newest / "optim" / "rank_00000.pt"
        size = path.stat().st_size
        os.truncate(path, size // 2)
        why = f"optim/rank_00000.pt has {size // 2} bytes, COMPLETE says {size} (truncated or overwritten)"
    capsys.readouterr()
    assert train.main([*args, "--resume", "--max_iters=6"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: skipping checkpoint {newest}: {why}"], err
    assert json.loads((out / "ckpt" / "step_000000006" / "trainer_state.json").read_text())["iter"] == 6


def test_a_shard_truncated_after_its_index_was_built_stops_before_training(tmp_path, capsys):
    cfg_file, args, out = make_run(tmp_path)
    assert train.main([cfg_file, *args, "--max_iters=2"]) == 0
    shard = tmp_path / "data" / "shard_000.bin"
    os.truncate(shard, shard.stat().st_size - 1000)
    before = (out / "metrics.jsonl").read_bytes(), _steps(out)
    capsys.readouterr()
    assert train.main([*args, "--resume", "--max_iters=4"]) == ec.USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {shard} is truncated: ") and err[-1].endswith(
        "Re-run `python -m data_preprocess.pretokenize` to regenerate it."), err
    assert ((out / "metrics.jsonl").read_bytes(), _steps(out)) == before  # nothing trained, nothing written


def test_a_sample_index_overwritten_by_garbage_is_rebuilt_before_training(tmp_path, capsys):
    cfg_file, args, out = make_run(tmp_path)
    common = ["--eval_interval=0", "--attention_dropout=0", "--residual_dropout=0"]
    assert train.main([cfg_file, *args, "--max_iters=2", *common]) == 0
    (index,) = (tmp_path / "data").glob("sample_index_*.npy")
    index.write_bytes(np.random.default_rng(0).integers(0, 255, index.stat().st_size, dtype=np.uint8).tobytes())
    capsys.readouterr()
    assert train.main([*args, "--resume", "--max_iters=4"]) == 0
    said = capsys.readouterr().out
    assert f"sample index {index} is corrupted (it does not match its sidecar's size, mtime or hash" in said, said
    ref_cfg, ref_args, ref_out = make_run(tmp_path, "ref")
    assert train.main([ref_cfg, *ref_args, "--max_iters=4", *common]) == 0
    assert read_losses(out) == read_losses(ref_out)  # the rebuilt index is the one the run trained on


@pytest.mark.slow
@needs_permissions
def test_a_data_dir_that_became_unreadable_is_one_line(tmp_path):
    """Root reads anything: the run drops that override (tests/support/disks.obey_permissions)."""
    cfg_file, args, out = make_run(tmp_path)
    assert run_cli([cfg_file, *args, "--max_iters=2"]).returncode == 0
    shard = tmp_path / "data" / "shard_000.bin"
    shard.chmod(0o000)
    proc = run_cli([*args, "--resume", "--max_iters=4"], preexec_fn=obey_permissions)
    assert proc.returncode == ec.USER_ERROR, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err == [f"error: {shard}: Permission denied; check its permissions or choose another path"], err


@pytest.mark.slow
@needs_permissions
def test_a_checkpoint_whose_files_lost_their_read_bit_is_one_line_not_a_skip(tmp_path):
    cfg_file, args, out = make_run(tmp_path)
    assert run_cli([cfg_file, *args, "--max_iters=4"]).returncode == 0
    newest = out / "ckpt" / "step_000000004"
    for path in newest.rglob("*"):
        if path.is_file():
            path.chmod(0o200)
    proc = run_cli([*args, "--resume", "--max_iters=6"], preexec_fn=obey_permissions)
    assert proc.returncode == ec.USER_ERROR, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot read checkpoint file {newest}/") and err[0].endswith(
        f"give it read permission again (chmod -R u+rX {newest}), then resume; no checkpoint was skipped"), err
    assert _steps(out) == ["step_000000002", "step_000000004"]


@pytest.mark.slow
@needs_mount
def test_under_torchrun_the_monitor_stops_on_a_full_disk_instead_of_restarting_into_it(tmp_path, tmpfs):
    """Two ranks; the disk fills after step 12: both ranks' optimizer shards fail, every rank fails the save
    together, rank 0 records exit 2 from the space it reserved, torchrun's agent exits 1, and the monitor reads 2
    and stops after one attempt."""
    cfg_file, args, _ = make_run(tmp_path)
    disk = tmpfs(20)
    out = disk / "run"
    args = [a for a in args if not a.startswith("--out_dir")] + [f"--out_dir={out}"]
    filler = _fill_when(out / "ckpt" / "step_000000012" / "COMPLETE", disk)
    run = command(2, [cfg_file, *args, *FILL_AFTER_STEP_12])
    mon = subprocess.run([*MONITOR, "--max_restarts=3", "--", *run], cwd=ROOT, capture_output=True, text=True,
                         timeout=400)
    assert filler, "the disk was never filled"
    assert mon.returncode == ec.USER_ERROR, mon.stderr[-3000:]
    assert "attempt 2" not in mon.stderr, mon.stderr[-3000:]
    assert "exit code 2 (USER_ERROR: config or data error) after" in mon.stderr, mon.stderr[-3000:]
    assert "(process exit code 1): no space left on device while writing checkpoint step 24" in mon.stderr
    status = json.loads((out / "exit_status.json").read_text())
    assert status["code"] == ec.USER_ERROR and status["iter"] == 24
    assert _steps(out) == ["step_000000012"] and not _temp_files(out)
