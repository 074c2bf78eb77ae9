"""bench/mfu.py --dry_run logic on the CPU (tiny shape, in-process: no subprocess per case)."""
import pytest

import bench.mfu as mfu


def test_shape_is_the_seed_recipe():
    shape = mfu.load_shape()
    assert (shape["hidden_dim"], shape["n_layers"], shape["n_heads"], shape["n_kv_heads"],
            shape["intermediate_size"], shape["vocab_size"], shape["max_seq_len"]) == (2048, 22, 32, 8, 5632, 64320, 2048)


def test_dry_run_cases_and_ratio():
    args = mfu.parse_args(["--dry_run", "--micro_batch=2", "--steps=1", "--warmup=1"])
    ours = mfu.run_case("z2all", 2, args)
    peer = mfu.run_case("hf_eager", 2, args)
    for r in (ours, peer):
        assert r["tokens_per_s"] > 0 and r["mfu"] >= 0 and 5.0 < r["loss"] < 7.5, r
    assert ours["flops_per_token"] == peer["flops_per_token"]
    line = mfu.ratio_line([ours], [peer, {"name": "hf_liger", "skipped": "x"}], None)
    assert line["best_peer"] == "hf_eager" and line["ratio"] == round(ours["tokens_per_s"] / peer["tokens_per_s"], 3)
    with pytest.raises(ValueError, match="at least 10 steps"):
        mfu.parse_args(["--steps=3"])
    with pytest.raises(ValueError, match="--sweep"):
        mfu._sweep_sizes("2,x")
