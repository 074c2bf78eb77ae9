"""bench/train_step.py --dry_run: train.py's own step and an HF peer run on real shards and report JSON lines."""
import json

import numpy as np
import pytest

import bench.train_step as ts
from dataset.format import write_bin


@pytest.mark.slow
def test_dry_run_reports_every_case_and_the_ratio(tmp_path, capsys):
    data = tmp_path / "bin"
    data.mkdir()
    write_bin(data / "shard_000.bin", (np.arange(20000) * 7 % 500).astype(np.uint16), 512)
    out = tmp_path / "results.jsonl"
    ts.main(["--dry_run", f"--data_dir={data}", "--micro_batch=2", "--ga=2", "--steps=2", "--warmup=1",
             "--rounds=1", "--cases=z2all,hf_eager", f"--out={out}"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "torch" in rows[0]["versions"]
    cases = {r["name"]: r for r in rows if "name" in r}
    assert set(cases) == {"z2all", "hf_eager"}, rows
    for r in cases.values():
        assert r["tokens_per_s"] > 0 and r["ga"] == 2 and r["sdpa_backend"] == "math (cpu)", r
    assert rows[-1]["ratio"].startswith("z2all") and rows[-1]["peer"] == "hf_eager"
    assert capsys.readouterr().out.count("\n") == len(rows)


def test_summary_spread_and_ratio():
    rows = [{"name": "z2all", "tokens_per_s": 110.0}, {"name": "z2all", "tokens_per_s": 90.0},
            {"name": "hf_liger", "tokens_per_s": 80.0}, {"name": "hf_eager", "tokens_per_s": 50.0}]
    s = ts.summarize(rows)
    z = next(r for r in s if r.get("summary") == "z2all")
    assert z["median_tokens_per_s"] == 100.0 and z["spread_pct"] == 20.0
    assert s[-1] == {"ratio": "z2all / best off-the-shelf peer", "peer": "hf_liger", "value": 1.25}
