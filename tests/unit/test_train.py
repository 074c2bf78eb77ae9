"""train.py end to end on a tiny model and synthetic data: run dir, logs, checkpoints, user errors, exact resume."""
import json
import os
import time

import pytest

import train
from tests.support.runs import make_run, read_losses


def test_train_writes_the_run_directory(tmp_path):
    cfg_file, args, out = make_run(tmp_path)
    assert train.main([cfg_file, *args]) == 0
    losses = read_losses(out)
    assert [i for i, _ in losses] == list(range(1, 9))
    assert losses[-1][1] < losses[0][1]
    with open(out / "metrics.jsonl") as f:
        recs = [json.loads(line) for line in f]
    assert {"iter", "loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_gb"} <= set(recs[0])
    assert [r["iter"] for r in recs if "valid_loss" in r] == [4, 8]
    steps = sorted(os.listdir(out / "ckpt"))
    assert steps == ["best", "step_000000006", "step_000000008"]  # keep_last_n = 2, plus best/
    for name in ("exp_config.json", "loss.png", "heartbeat.json"):
        assert (out / name).is_file(), name
    assert (out / "ckpt" / "step_000000008" / "COMPLETE").is_file()


def test_init_from_starts_a_new_run_from_weights(tmp_path):
    cfg_file, args, out = make_run(tmp_path)
    assert train.main([cfg_file, *args, "--max_iters=2"]) == 0
    assert train.main([cfg_file, f"--data_dir={tmp_path / 'data'}", f"--out_dir={tmp_path / 'new'}", "--max_iters=2",
                       f"--init_from={out}"]) == 0
    assert read_losses(tmp_path / "new")[0][1] < read_losses(out)[0][1]


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--data_dir=/nonexistent/dir"], "does not exist"),
        (["--resume"], "no complete checkpoint"),
        (["--batch_size=eight"], "not a valid int"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, extra, match, capsys):
    cfg_file, args, out = make_run(tmp_path)
    if "--resume" in extra:
        import configurator

        configurator.save_config(configurator.build_config([cfg_file, *args]), str(out))
        cfg_file = None
    argv = [a for a in [cfg_file, *args, *extra] if a]
    # the last --data_dir wins, as on the command line
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and match in err[0], err


def test_resume_with_a_changed_shape_is_refused(tmp_path, capsys):
    cfg_file, args, out = make_run(tmp_path)
    assert train.main([cfg_file, *args, "--max_iters=2"]) == 0
    capsys.readouterr()
    assert train.main([*args, "--resume", "--hidden_dim=64"]) == 2
    err = capsys.readouterr().err
    assert "hidden_dim: checkpoint 32 vs now 64" in err


def test_a_shape_that_cannot_fit_is_refused_before_anything_is_built(tmp_path, capsys, monkeypatch):
    import tasks.setup

    cfg = tmp_path / "my.py"
    cfg.write_text("batch_size = 4\nmax_iters = 3\n")  # no shape: the dataclass defaults, the 1.25B seed shape
    monkeypatch.setattr(tasks.setup, "available_bytes", lambda device: 8 * 10 ** 9)
    assert train.main([str(cfg), f"--out_dir={tmp_path / 'run'}", "--data_dir=/nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training needs about" in err[0] and "8.0 GB is available" in err[0], err
    assert "the seed 1.25B shape" in err[0] and "--batch_size" in err[0]  # checked before the missing data dir


def test_confirmations_of_init_from_and_of_a_finished_resume(tmp_path, capsys):
    cfg_file, args, out = make_run(tmp_path)
    assert train.main([cfg_file, *args, "--max_iters=2"]) == 0
    capsys.readouterr()
    assert train.main([*args, "--resume"]) == 0
    text = capsys.readouterr().out
    assert "nothing to train" in text and "--max_iters=4" in text and "--- sample" not in text
    new = tmp_path / "new"
    assert train.main([cfg_file, f"--data_dir={tmp_path / 'data'}", f"--out_dir={new}", "--max_iters=1",
                       f"--init_from={out}"]) == 0
    text = capsys.readouterr().out
    assert "initialized from" in text and "step_000000002" in text
    assert train.main([cfg_file, f"--data_dir={tmp_path / 'data'}", f"--out_dir={tmp_path / 'clash'}",
                       f"--init_from={out}", "--vocab_size=256"]) == 2
    err = capsys.readouterr().err
    assert "vocab_size: checkpoint 128 vs now 256" in err and "set --vocab_size=128 to match it" in err


def test_weights_follow_the_umask(tmp_path):
    cfg_file, args, out = make_run(tmp_path)
    assert train.main([cfg_file, *args, "--max_iters=2"]) == 0
    mask = os.umask(0)
    os.umask(mask)
    for path in (out / "ckpt").rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_eval_time_stays_out_of_the_logged_step_time(tmp_path, monkeypatch):
    """ms_per_iter (and tokens/s) time the training steps: a slow evaluation does not inflate the log interval
    after it, so a run's training time is the sum of its intervals (bench/slow_link.py --time_to_loss)."""
    from tasks.trainer import Trainer

    evaluate = Trainer.evaluate

    def slow_evaluate(self):
        time.sleep(1.5)
        evaluate(self)

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    cfg_file, args, out = make_run(tmp_path)
    assert train.main([cfg_file, *args, "--max_iters=6", "--log_interval=1", "--eval_interval=2",
                       "--save_interval=6"]) == 0
    with open(out / "metrics.jsonl") as f:
        recs = [json.loads(line) for line in f]
    assert [r["iter"] for r in recs if "valid_loss" in r] == [2, 4, 6]
    after_eval = {r["iter"]: r["ms_per_iter"] for r in recs if "ms_per_iter" in r and r["iter"] in (3, 5)}
    assert len(after_eval) == 2 and max(after_eval.values()) < 1000, after_eval
