"""utils.logging: print0, metrics.jsonl appends, resume truncation, TensorBoard scalars."""
import json

import pytest
import torch

from utils.logging import MetricsLogger, print0, read_metrics, truncate_metrics


def test_print0(capsys):
    print0("hello", 1, rank=0)
    print0("hidden", rank=1)
    assert capsys.readouterr().out == "hello 1\n"


def test_log_and_read(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log({"iter": 1, "loss": torch.tensor(2.5), "lr": 1e-3})
        log.log({"iter": 2, "loss": 2.0, "lr": 1e-3, "note": "x"})
        with pytest.raises(ValueError, match="iter"):
            log.log({"loss": 1.0})
    assert read_metrics(tmp_path / "metrics.jsonl") == [
        {"iter": 1, "loss": 2.5, "lr": 1e-3}, {"iter": 2, "loss": 2.0, "lr": 1e-3, "note": "x"}]
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_disabled_is_noop(tmp_path):
    log = MetricsLogger(tmp_path, enabled=False)
    log.log({"iter": 1, "loss": 1.0})
    log.close()
    MetricsLogger(None).log({"iter": 1})
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_truncates_later_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"iter": i, "loss": 10.0 - i}) for i in range(1, 8)]
    path.write_text("\n".join(lines) + '\n{"iter": 8, "lo')  # killed mid-line
    with MetricsLogger(tmp_path, tensorboard=False, resume_iter=4) as log:
        log.log({"iter": 5, "loss": 0.5})
    assert [r["iter"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    assert read_metrics(path)[-1]["loss"] == 0.5
    assert truncate_metrics(path, 10) == 0


def test_torn_tail_without_resume_gets_newline(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 1}\n{"iter": 2, "l')
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log({"iter": 3})
    with pytest.warns(RuntimeWarning, match="unparseable"):  # the torn line now sits mid-file
        assert [r["iter"] for r in read_metrics(path)] == [1, 3]


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path) as log:
        for i in range(1, 4):
            log.log({"iter": i, "loss": 1.0 / i, "lr": 0.1, "flag": True, "name": "x"})
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "lr"}
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3]
