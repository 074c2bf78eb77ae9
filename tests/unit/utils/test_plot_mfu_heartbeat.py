"""utils.plot, utils.mfu, utils.heartbeat, utils.fileio."""
import json
import os
import time

import pytest
import torch

from utils.fileio import atomic_write_json, sha256_file
from utils.heartbeat import Heartbeat, read_heartbeat
from utils.mfu import compute_mfu, device_peak_flops, peak_flops_for_name
from utils.plot import plot_metrics


def test_plot_metrics(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    recs = [{"iter": i, "loss": 5.0 / i, "lr": 1e-3 * min(1, i / 3)} for i in range(1, 11)]
    recs += [{"iter": 5, "valid_loss": 1.2}, {"iter": 10, "valid_loss": 0.9}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = plot_metrics(metrics, tmp_path / "loss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["loss.png", "metrics.jsonl"]  # no temp file left behind
    assert plot_metrics(tmp_path / "missing.jsonl", tmp_path / "empty.png").is_file()


def test_plot_draws_each_sources_valid_loss(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    recs = [{"iter": i, "loss": 5.0 / i, "tokens/web": 100 * i} for i in range(1, 5)]
    recs += [{"iter": 2, "valid_loss": 1.2, "valid/web": 1.5, "valid/code": 0.8},
             {"iter": 4, "valid_loss": 0.9, "valid/web": 1.1, "valid/code": 0.6}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in recs))
    from utils.logging import read_metrics
    from utils.plot import loss_curves

    curves = {label: (xs, ys) for label, _, xs, ys in loss_curves(read_metrics(metrics))}
    assert sorted(curves) == ["train loss", "valid code", "valid loss", "valid web"]
    assert curves["valid code"] == ([2, 4], [0.8, 0.6])
    assert plot_metrics(metrics, tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_peak_flops_and_mfu():
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops_for_name("NVIDIA H200") == 989.4e12
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for_name("NVIDIA GeForce RTX 3090") is None
    assert device_peak_flops(torch.device("cpu")) is None
    assert device_peak_flops(torch.device("cpu"), override_tflops=100.0) == 100e12
    with pytest.raises(ValueError, match="override_tflops"):
        device_peak_flops(torch.device("cpu"), override_tflops=-1.0)
    assert compute_mfu(6e9, 1e4, 1e14) == pytest.approx(0.6)
    assert compute_mfu(6e9, 1e4, None) is None


def test_heartbeat(tmp_path):
    path = tmp_path / "sub" / "heartbeat.json"
    assert read_heartbeat(path) is None
    hb = Heartbeat(path, min_interval_s=60)
    before = time.time()
    assert hb.beat(3)
    assert not hb.beat(4)  # throttled
    rec = read_heartbeat(path)
    assert rec["iter"] == 3 and rec["pid"] == os.getpid() and rec["time"] >= before
    assert hb.beat(5, force=True) and read_heartbeat(path)["iter"] == 5
    path.write_text("{not json")
    assert read_heartbeat(path) is None


def test_atomic_write_json(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2} and os.listdir(tmp_path) == ["a.json"]
    assert len(sha256_file(p)) == 64
