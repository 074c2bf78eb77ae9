"""The best-effort outputs of a run on a real full tmpfs: metrics.jsonl, TensorBoard, loss.png and the heartbeat are
reported once, never stop the run, never leave a torn line or a temp file, and the run's liveness survives."""
import json
import os
import time

import pytest

from tests.support.disks import fill, needs_mount, tmpfs  # noqa: F401
from utils.disk_faults import BestEffort
from utils.heartbeat import Heartbeat, read_heartbeat
from utils.logging import MetricsLogger, read_metrics
from utils.plot import plot_metrics

pytestmark = needs_mount


def test_metrics_keep_whole_lines_and_catch_up_when_space_is_back(tmpfs):
    run, said = tmpfs(1), []
    log = MetricsLogger(run, tensorboard=False, best_effort=BestEffort(warn=said.append))
    log.log({"iter": 1, "loss": 1.0})
    filler = fill(run, leave=4096)  # the current page of metrics.jsonl has room for a few records only
    for i in range(2, 200):
        log.log({"iter": i, "loss": 1.0, "pad": "x" * 200})
    assert len(said) == 1 and said[0].startswith(f"no space left on device while writing metrics to {run}"), said
    assert "the run goes on without it" in said[0]
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert all(line.endswith("\n") and json.loads(line) for line in lines)  # no torn line in the file
    filler.unlink()
    log.log({"iter": 200, "loss": 1.0})
    log.close()
    assert [r["iter"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 201))  # no gap
    assert said[1] == f"metrics is written again to {run / 'metrics.jsonl'}"


def test_tensorboard_is_closed_once_the_disk_is_full_and_training_goes_on(tmpfs, capfd):
    pytest.importorskip("tensorboard")
    run, said = tmpfs(1), []
    log = MetricsLogger(run, best_effort=BestEffort(warn=said.append))
    log.log({"iter": 1, "loss": 1.0})
    filler = fill(run)
    for i in range(2, 3000):  # enough events to outgrow the writer's buffer
        log.log({"iter": i, "loss": 1.0})
    log.close()
    filler.unlink()
    tb = [m for m in said if "TensorBoard events" in m]
    assert len(tb) == 1 and tb[0].startswith(f"no space left on device while writing TensorBoard events to {run}")
    assert "Traceback" not in capfd.readouterr().err  # the writer thread's own traceback is not printed
    assert not [p for p in run.rglob("*") if p.name.startswith(".tmp")]


def test_the_plot_keeps_the_old_png_and_leaves_no_temp_file(tmpfs):
    run = tmpfs(1)
    with MetricsLogger(run, tensorboard=False) as log:
        for i in range(1, 20):
            log.log({"iter": i, "loss": 1.0 / i, "lr": 0.1})
    plot_metrics(run / "metrics.jsonl", run / "loss.png")
    before = (run / "loss.png").read_bytes()
    with MetricsLogger(run, tensorboard=False) as log:
        log.log({"iter": 20, "loss": 0.01, "lr": 0.1})
    fill(run)
    said = []
    best = BestEffort(warn=said.append)
    with best("the loss plot", run / "loss.png"):
        plot_metrics(run / "metrics.jsonl", run / "loss.png")
    assert len(said) == 1 and said[0].startswith("no space left on device while writing the loss plot")
    assert (run / "loss.png").read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".fill")) == ["loss.png", "metrics.jsonl"]


def test_a_heartbeat_on_a_full_disk_still_says_the_run_is_alive(tmpfs):
    run, said = tmpfs(1), []
    hb = Heartbeat(run / "heartbeat.json", best_effort=BestEffort(warn=said.append))
    hb.beat(1)
    written = read_heartbeat(run / "heartbeat.json")
    fill(run)
    time.sleep(0.05)
    for i in range(2, 5):
        assert hb.beat(i, section="checkpoint" if i == 3 else "step")
    beat = read_heartbeat(run / "heartbeat.json")
    assert beat["iter"] == 1 and beat["time"] == written["time"]  # the record could not be replaced ...
    assert beat["alive"] > written["time"] + 0.04  # ... but its mtime moved: the monitor sees a live run
    assert len(said) == 1 and said[0].startswith(f"no space left on device while writing the heartbeat to {run}")
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".fill")) == ["heartbeat.json"]
    assert os.path.getsize(run / "heartbeat.json") > 0
