"""monitor_process.py on real disk faults: a run whose disk is full stops the monitor (exit 2) instead of a restart
into the same disk, also when only the disk itself says so; a monitor whose own log cannot be written (a full or a
read-only disk) keeps supervising."""
from pathlib import Path

from tests.support.disks import fill, needs_mount, read_only, tmpfs  # noqa: F401
from tests.dist.test_monitor_process import _attempts, _monitor
from utils import exit_codes as ec
from utils.run_status import read_exit_status

pytestmark = needs_mount


def test_a_run_on_a_full_disk_stops_the_monitor_through_its_exit_status(tmp_path, tmpfs):
    """The agent exits 1; the status, written from the space train.py reserved, says 2: no restart."""
    run = tmpfs(1) / "run"
    mon = _monitor(tmp_path, "disk_full", extra=[f"--out_dir={run}"])
    assert mon.returncode == ec.USER_ERROR, mon.stderr
    assert len(_attempts(tmp_path)) == 1
    assert "stopping: exit code 2 (USER_ERROR: config or data error): no space left on device" in mon.stderr
    assert read_exit_status(run).code == ec.USER_ERROR and not (run / ".exit_status.reserve").exists()


def test_a_failure_without_an_exit_status_on_a_full_disk_is_not_restarted(tmp_path, tmpfs):
    disk = tmpfs(1)
    run = disk / "run"
    run.mkdir()
    fill(disk)  # not even exit_status.json fits
    mon = _monitor(tmp_path, "exit:1", "--max_restarts=3", extra=[f"--out_dir={run}"])
    assert mon.returncode == ec.USER_ERROR, mon.stderr
    assert len(_attempts(tmp_path)) == 1
    assert f"and the disk of {run} is full (0 bytes free): a restart would fail the same way" in mon.stderr


def test_a_run_whose_heartbeat_cannot_be_written_is_not_taken_for_a_hung_one(tmp_path, tmpfs):
    """The beats on the full disk only touch heartbeat.json; 3 s of them outlive a 1 s hang timeout."""
    run = tmpfs(1) / "run"
    mon = _monitor(tmp_path, "beat_on_full_disk", "--hang_timeout_s=1", extra=[f"--out_dir={run}"])
    assert mon.returncode == 0, mon.stderr
    assert "hang" not in mon.stderr.replace("hang timeouts", "") and len(_attempts(tmp_path)) == 1, mon.stderr
    assert mon.stderr.count("warning: no space left on device while writing the heartbeat to") == 1, mon.stderr


def test_a_failure_on_a_read_only_out_dir_is_not_restarted(tmp_path, read_only):
    run = tmp_path / "run"
    run.mkdir()
    read_only(run)
    mon = _monitor(tmp_path, "exit:1", "--max_restarts=3", extra=[f"--out_dir={run}"])
    assert mon.returncode == ec.USER_ERROR, mon.stderr
    assert f"and {run} is on a read-only file system: a restart would fail the same way" in mon.stderr


def _supervises_with_an_unwritable_log(tmp_path, log: Path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mon = _monitor(scratch, "crash", f"--log_file={log}")  # a crash, then a resumed attempt that succeeds
    assert mon.returncode == 0, mon.stderr
    assert [a.endswith("--resume") for a in _attempts(scratch)] == [False, True]
    assert mon.stderr.count(f"cannot append to {log}") == 1 and "training command finished" in mon.stderr


def test_a_monitor_whose_log_disk_is_full_keeps_supervising(tmp_path, tmpfs):
    disk = tmpfs(1)
    fill(disk)
    _supervises_with_an_unwritable_log(tmp_path, disk / "monitor.log")


def test_a_monitor_whose_log_is_on_a_read_only_disk_keeps_supervising(tmp_path, read_only):
    logs = tmp_path / "logs"
    logs.mkdir()
    read_only(logs)
    _supervises_with_an_unwritable_log(tmp_path, logs / "monitor.log")
