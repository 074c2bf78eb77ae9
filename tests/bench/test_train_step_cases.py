"""bench/train_step.py's case names: z2all variants (`z2all:key=value;...`) and the torchtitan peer.

The torchtitan parts run only where torchtitan is installed (CI installs requirements-dev.txt, which lacks it);
without it the case must report itself skipped. Building torchtitan happens in a child process only: its
apply_compile and activation checkpointing set process-wide dynamo flags that must not leak into this suite.
"""
import argparse
import importlib.util
import json

import numpy as np
import pytest

import bench.train_step as ts
from dataset.format import write_bin

HAVE_TORCHTITAN = importlib.util.find_spec("torchtitan") is not None


def _args(case: str, data_dir: str = "D", z2all_set=()) -> argparse.Namespace:
    return argparse.Namespace(case=case, dry_run=True, data_dir=data_dir, micro_batch=2, ga=2,
                              z2all_set=list(z2all_set), round=0, steps=1, warmup=1)


def test_split_case_reads_variants_and_refuses_malformed_names():
    assert ts.split_case("z2all") == ("z2all", [])
    assert ts.split_case("z2all:cross_entropy_chunk_size=512;compile=true") == \
        ("z2all", [("cross_entropy_chunk_size", "512"), ("compile", "true")])
    assert ts.split_case("torchtitan:ac=none;attn=flex")[0] == "torchtitan"
    for bad in ("nope", "hf_eager:compile=true", "z2all:", "z2all:compile", "z2all:=1", "torchtitan:ac=maybe",
                "torchtitan:colour=red"):
        with pytest.raises(ValueError):
            ts.split_case(bad)
    with pytest.raises(SystemExit):
        ts.parse_args(["--data_dir=D", "--cases=z2all,hf_eager:compile=true"])


def test_variant_flags_come_after_z2all_set_and_reach_the_config():
    import configurator

    argv = ts.z2all_argv(_args("z2all:cross_entropy_chunk_size=16;residual_in_fp32=false",
                               z2all_set=["--cross_entropy_chunk_size=64"]), "OUT")
    assert argv[-3:] == ["--cross_entropy_chunk_size=64", "--cross_entropy_chunk_size=16",
                         "--residual_in_fp32=false"]
    cfg = configurator.build_config(argv)
    assert cfg.model.cross_entropy_chunk_size == 16 and cfg.model.residual_in_fp32 is False


def test_summary_keeps_variant_names_and_counts_torchtitan_as_a_peer():
    rows = [{"name": "z2all", "tokens_per_s": 100.0}, {"name": "z2all:compile=true", "tokens_per_s": 300.0},
            {"name": "hf_eager", "tokens_per_s": 50.0}, {"name": "hf_patch", "tokens_per_s": 400.0},
            {"name": "torchtitan", "tokens_per_s": 80.0}, {"name": "torchtitan:ac=none", "tokens_per_s": 125.0},
            {"name": "torchtitan", "skipped": "x"}]
    s = ts.summarize(rows)
    assert {r["summary"] for r in s if "summary" in r} == \
        {"z2all", "z2all:compile=true", "hf_eager", "hf_patch", "torchtitan", "torchtitan:ac=none"}
    ratios = [r for r in s if "ratio" in r]
    assert ratios == [{"ratio": "z2all / torchtitan", "peer": "torchtitan", "value": 1.25},
                      {"ratio": "z2all / torchtitan:ac=none", "peer": "torchtitan:ac=none", "value": 0.8},
                      {"ratio": "z2all / best off-the-shelf peer", "peer": "torchtitan:ac=none", "value": 0.8}]
    no_titan = ts.summarize([r for r in rows if not r["name"].startswith("torchtitan")])
    assert [r for r in no_titan if "ratio" in r] == \
        [{"ratio": "z2all / best off-the-shelf peer", "peer": "hf_eager", "value": 2.0}]


def test_torchtitan_case_skips_where_torchtitan_is_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchtitan" else real(name, *a))
    row = ts.run_case(_args("torchtitan:ac=none"))
    assert row["name"] == "torchtitan:ac=none" and "torchtitan not importable" in row["skipped"]


@pytest.mark.slow
def test_dry_run_of_a_z2all_variant_and_torchtitan(tmp_path):
    """Real child processes, through the driver: the variant's row under its own name, torchtitan's row ran
    (model at the HF peer's shape: the same FLOPs per token) or skipped, the flex variant skipped on the CPU."""
    import torch

    from bench.mfu import DRY_SHAPE, build_hf

    data = tmp_path / "bin"
    data.mkdir()
    write_bin(data / "shard_000.bin", (np.arange(20000) * 7 % 500).astype(np.uint16), 512)
    out = tmp_path / "results.jsonl"
    ts.main(["--dry_run", f"--data_dir={data}", "--micro_batch=2", "--ga=2", "--steps=1", "--warmup=1",
             "--rounds=1", "--cases=z2all:cross_entropy_chunk_size=16,torchtitan,torchtitan:ac=none;attn=flex",
             f"--out={out}"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "torchtitan" in rows[0]["versions"] and "'--cases=z2all:" in rows[0]["command"]  # shell-quoted
    cases = {r["name"]: r for r in rows if "name" in r}
    assert cases["z2all:cross_entropy_chunk_size=16"]["tokens_per_s"] > 0, rows
    assert {r["summary"] for r in rows if "summary" in r} >= {"z2all:cross_entropy_chunk_size=16"}
    titan, flex = cases["torchtitan"], cases["torchtitan:ac=none;attn=flex"]
    if not HAVE_TORCHTITAN:
        assert "not importable" in titan["skipped"] and "not importable" in flex["skipped"], rows
        return
    assert titan["tokens_per_s"] > 0 and titan["torchtitan"]["ac"] == "selective", rows
    assert titan["flops_per_token"] == build_hf(DRY_SHAPE, torch.device("cpu"), 3e-4, "hf_eager", True)[3]
    assert "no backward on the CPU" in flex["skipped"], rows
