"""train.py on a mix, in process (the tiny config, synthetic sources): what a run prints and logs for each source,
--dry_run, raw text pretokenized on first use, and the one-line refusals of a resume that would change the mix in
force (nothing in the run dir changes)."""
import json

import pytest

import train
from tests.support.runs import make_mix_run

NO_DROPOUT = ["--attention_dropout=0", "--residual_dropout=0"]
DOCS = [f"def f{i}(x):\n    return x * {i}  # the answer is {i * 7}\n" * (1 + i % 3) for i in range(60)]


def snapshot(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_mix_run_reports_every_source(tmp_path, capsys):
    cfg, args, out = make_mix_run(tmp_path)
    assert train.main([cfg, *args, *NO_DROPOUT, "--max_iters=8", "--eval_interval=4", "--tensorboard=true"]) == 0
    text = capsys.readouterr().out
    assert "data mix: 2 source(s), 2 stage(s)" in text and "a: 320 tokens, 19 windows (18 for training)" in text
    assert "from step 0: a 0.7, b 0.3" in text and "from step 7: a 0.25, b 0.75" in text
    assert "source 'a' has used all 18 of its training windows; epoch 2 starts at sample" in text
    assert "iter 4 | valid loss" in text and "| a " in text and "data read:      a " in text
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert len(steps) == 8
    for r in steps:  # cumulative, on every log line: 8 samples of 16 tokens per step
        assert r["tokens/a"] + r["tokens/b"] == r["iter"] * 8 * 16
        assert r["epoch/a"] == pytest.approx(r["tokens/a"] / 16 / 18)
    valid = [r for r in recs if "valid_loss" in r]
    assert [r["iter"] for r in valid] == [4, 8]
    for r, wa in zip(valid, (0.7, 0.25)):  # the mean weighted by the mix of the last step trained
        assert r["valid_loss"] == pytest.approx(wa * r["valid/a"] + (1 - wa) * r["valid/b"], rel=1e-6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(out / "tb")).Reload().Tags()["scalars"]
    assert {"valid/a", "valid/b", "valid_loss", "tokens/a", "epoch/b"} <= set(tags)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    cfg, args, out = make_mix_run(tmp_path)
    assert train.main([cfg, *args, "--max_iters=8", "--dry_run"]) == 0
    text = capsys.readouterr().out
    assert "budget: 8 steps x 8 samples x 16 tokens = 1,024 tokens" in text
    assert "stage from step 0 (steps 1-7): a 624 tokens (69.6%, 2.167 epochs)" in text  # 39 of 56: within one of 39.2
    assert "stage from step 7 (steps 8-8): a 32 tokens (25.0%, 0.111 epochs); b 96 tokens (75.0%," in text
    assert "read more than once: a (2.28 epochs)" in text
    assert not out.exists()
    assert train.main([cfg, f"--data_dir={tmp_path / 'mix' / 'b'}", f"--out_dir={out}", "--dry_run"]) == 0
    assert "the whole run: data 1,024 tokens (100.0%, 0.291 epochs)" in capsys.readouterr().out  # 64 of 220
    assert not out.exists()


@pytest.mark.parametrize("change,match", [
    (["--data_mix=a:0.5:{root}/a,b:0.5:{root}/b"], "would change the mix in force (the stage from step 0: a 0.7, "
                                                   "b 0.3) to the stage from step 0: a 0.5, b 0.5; keep the stages"),
    (["--data_stages=2:a:1,b:3"], "add a stage instead, from step 4 or later"),
    (["--batch_size=2"], "--batch_size=2 on --resume: the run's data position counts micro-batches made with "
                         "batch_size=4, so another value would repeat or skip samples; drop --batch_size (the number "
                         "of ranks may change)"),
])
def test_a_resume_that_would_change_the_mix_in_force_is_refused(tmp_path, capsys, change, match):
    cfg, args, out = make_mix_run(tmp_path)
    assert train.main([cfg, *args, *NO_DROPOUT, "--max_iters=4", "--eval_interval=0", "--save_interval=4"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    flags = [c.format(root=tmp_path / "mix") for c in change]
    assert train.main([f"--out_dir={out}", "--resume", "--max_iters=8", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert snapshot(out) == before


def test_a_raw_source_is_pretokenized_on_first_use_and_rebuilt_when_it_changes(tmp_path, capsys):
    from data_preprocess.pretokenize import pretokenize
    from tokenizer.train_tokenizer import train_tokenizer

    cfg, _, _ = make_mix_run(tmp_path)
    train_tokenizer(DOCS, 300, "bbpe", str(tmp_path / "tok"))
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    pretokenize(str(raw), str(tmp_path / "tok"), str(tmp_path / "shards"), progress=False, log=lambda m: None)
    mix = f"--data_mix=raw:1:{raw},shards:1:{tmp_path / 'shards'}"
    flags = [cfg, mix, "--vocab_size=320", "--max_iters=1", "--eval_interval=0", "--sample_tokens=0"]
    assert train.main([*flags, f"--out_dir={tmp_path / 'r1'}"]) == 0
    assert f"building {raw}.z2all-pretrain from 1 file(s)" in capsys.readouterr().out
    built = tmp_path / "raw.jsonl.z2all-pretrain"
    assert (built / "shard_000000.bin").read_bytes() == (tmp_path / "shards" / "shard_000000.bin").read_bytes()
    assert train.main([*flags, f"--out_dir={tmp_path / 'r2'}"]) == 0
    assert "pretokenize:" not in capsys.readouterr().out  # fresh: reused
    raw.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:40]))
    assert train.main([*flags, f"--out_dir={tmp_path / 'r3'}"]) == 0
    assert "rebuilding the stale" in capsys.readouterr().out
