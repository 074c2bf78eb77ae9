"""utils.exit_codes, utils.run_status (exit_status.json) and the sections of utils.heartbeat."""
import json
import os
import time

import pytest

from utils import exit_codes as ec
from utils.heartbeat import CHECKPOINT, EVAL, STARTUP, STEP, Heartbeat, read_heartbeat
from utils.run_status import SpikeWindow, exit_status_path, read_exit_status, write_exit_status


def test_exit_codes_are_distinct_and_described():
    codes = [ec.OK, ec.CRASH, ec.USER_ERROR, ec.NAN, ec.SPIKE, ec.PREEMPTED, ec.CANNOT_EXECUTE, ec.NOT_FOUND]
    assert len(set(codes)) == len(codes) and all(c < 128 for c in codes)
    assert ec.STOP_AT_ONCE == {ec.USER_ERROR, ec.NAN, ec.INTERRUPTED, ec.CANNOT_EXECUTE, ec.NOT_FOUND}
    assert ec.INTERRUPTED == 130 and ec.describe(130) == "exit code 130 (INTERRUPTED: interrupted by Ctrl-C, not saved)"
    assert ec.describe(2) == "exit code 2 (USER_ERROR: config or data error)"
    assert ec.describe(137) == "exit code 137 (killed by SIGKILL)"
    assert ec.describe(42) == "exit code 42 (CRASH: the run crashed)"


def test_exit_status_round_trip(tmp_path):
    run = tmp_path / "run"  # created by the writer: a config error may come before the run dir exists
    assert read_exit_status(run) is None
    before = time.time()
    spike = SpikeWindow(start_iter=5, end_iter=9, consumed_start=40, consumed_end=80)
    path = write_exit_status(run, ec.SPIKE, "loss 9.1\n> 3 x median", 9, spike=spike)
    assert path == exit_status_path(run) == run / "exit_status.json"
    status = read_exit_status(run, since=before)
    assert status.code == ec.SPIKE and status.reason == "loss 9.1 > 3 x median" and status.iter == 9
    assert status.spike == spike and status.pid == os.getpid() and status.time >= before
    assert read_exit_status(run, since=time.time() + 1) is None  # an earlier attempt's file
    write_exit_status(run, ec.PREEMPTED, "SIGTERM", 12)
    assert "spike" not in json.loads(path.read_text()) and read_exit_status(run).spike is None


def test_exit_status_written_by_a_newer_trainer_keeps_reading(tmp_path):
    record = {"code": 2, "reason": "bad key", "iter": 0, "time": 1.0, "pid": 3, "traceback": "..."}
    exit_status_path(tmp_path).write_text(json.dumps(record))
    assert read_exit_status(tmp_path).reason == "bad key"


@pytest.mark.parametrize("kwargs, match", [
    ({"code": ec.SPIKE}, "spike window goes with code 4"),
    ({"code": ec.CRASH, "spike": SpikeWindow(1, 2, 3, 4)}, "spike window goes with code 4"),
    ({"code": ec.SPIKE, "spike": SpikeWindow(5, 4, 0, 1)}, "ends before it starts"),
    ({"code": ec.SPIKE, "spike": SpikeWindow(1, 2, -1, 1)}, "consumed_start must be an int >= 0"),
    ({"code": 300}, "0-255"),
])
def test_write_refuses_an_inconsistent_record(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_exit_status(tmp_path, reason="x", iter=1, **kwargs)
    assert not exit_status_path(tmp_path).exists()


@pytest.mark.parametrize("text, match", [
    ("{torn", "unreadable"),
    ("[1]", "not a JSON object"),
    ('{"code": 4, "reason": "", "iter": 1, "time": 1.0, "pid": 1}', "spike window"),
    ('{"code": "2", "reason": "", "iter": 1, "time": 1.0, "pid": 1}', "code must be an int"),
    ('{"code": 2, "time": 1.0}', "not a valid exit status"),
])
def test_read_names_the_file_of_a_bad_record(tmp_path, text, match):
    exit_status_path(tmp_path).write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        read_exit_status(tmp_path)
    assert "exit_status.json" in str(err.value)


def test_heartbeat_sections(tmp_path):
    path = tmp_path / "heartbeat.json"
    hb = Heartbeat(path, min_interval_s=60)
    assert hb.beat(0, section=STARTUP)
    start = read_heartbeat(path)
    assert start["section"] == STARTUP and start["section_start"] == start["time"]
    assert hb.beat(1) and read_heartbeat(path)["section"] == STEP  # a new section is never throttled
    assert not hb.beat(2)
    step_start = read_heartbeat(path)["section_start"]
    with hb.section(CHECKPOINT, 2):
        rec = read_heartbeat(path)
        assert rec["section"] == CHECKPOINT and rec["iter"] == 2 and rec["section_start"] >= step_start
    back = read_heartbeat(path)
    assert back["section"] == STEP and back["section_start"] >= rec["section_start"]
    assert hb.beat(3, section=EVAL) and hb.beat(3, section=EVAL, force=True)
    with pytest.raises(ValueError, match="unknown heartbeat section 'save'"):
        hb.beat(4, section="save")


def test_heartbeat_without_a_section_reads_as_step(tmp_path):
    path = tmp_path / "heartbeat.json"
    path.write_text(json.dumps({"time": 5.0, "iter": 7, "pid": 1}))  # written before sections existed
    assert read_heartbeat(path) == {"time": 5.0, "iter": 7, "pid": 1, "section": STEP, "section_start": 5.0}
