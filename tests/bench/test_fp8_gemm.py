"""bench/fp8_gemm.py --dry_run on the CPU: every case of the asked GEMMs runs and prints its record (the logic only)."""
import json

import pytest

import bench.fp8_gemm as fp8_gemm

GEMM_CASES = {"fwd_bf16", "fwd_fp8", "fwd_fp8_precise", "fwd_fp8_cast", "dgrad_bf16", "dgrad_fp8", "dgrad_fp8_fast",
              "dgrad_fp8_cast", "wgrad_bf16", "wgrad_bf16_dequant", "wgrad_fp8_rowwise", "wgrad_fp8_rowwise_cast",
              "weight_quant", "fwdbwd_bf16", "fwdbwd_fp8", "fwdbwd_fp8_tensor"}


def test_dry_run_prints_every_case_and_the_summaries(capsys):
    assert fp8_gemm.main(["--dry_run", "--gemms=gate_up,down", "--rounds=2", "--warmup=1", "--rep=1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["device"] == "cpu" and lines[0]["tokens"] == fp8_gemm.DRY_TOKENS
    cases = {}
    for rec in lines[1:]:
        if "case" in rec:
            cases.setdefault(rec["gemm"], {})[rec["case"]] = rec
    # each GEMM's own cases, plus the producer of its input: the add+RMSNorm for gate_up, the SwiGLU for down
    assert set(cases["gate_up"]) == GEMM_CASES | {"norm_bf16", "norm_fp8"}
    assert set(cases["down"]) == GEMM_CASES | {"swiglu_bf16", "swiglu_fp8"}
    for recs in cases.values():
        for name, rec in recs.items():
            assert rec["ms"] > 0 and rec["spread"] >= 0, (name, rec)
            assert ("tflops" in rec) == (not name.startswith(("norm", "swiglu", "weight_quant"))), name
    per_gemm = [r for r in lines if r.get("summary") == "bf16 ms / fp8 recipe ms"]
    assert [r["gemm"] for r in per_gemm] == ["gate_up", "down"]
    total = lines[-1]
    assert total["gemms"] == ["gate_up", "down"] and set(fp8_gemm.RECIPE) <= set(total)


def test_speedups_compare_the_recipe_with_bf16():
    recs = {name: {"ms": 1.0} for pair in fp8_gemm.RECIPE.values() for name in pair}
    recs["fwd_bf16"]["ms"], recs["fwd_fp8"]["ms"] = 3.0, 2.0
    assert fp8_gemm.speedups(recs) == {"fwd": 1.5, "dgrad": 1.0, "wgrad": 1.0, "fwdbwd": 1.0}


def test_unknown_gemm_and_no_gpu_are_refused(capsys):
    with pytest.raises(SystemExit):
        fp8_gemm.main(["--dry_run", "--gemms=lm_head"])
    assert fp8_gemm.main([]) == 2  # no GPU with FP8 tensor cores here
    assert "--dry_run" in capsys.readouterr().err


def test_train_step_bench_takes_fp8_as_a_z2all_variant():
    """bench/train_step.py --cases=z2all,z2all:fp8=rowwise times the whole step with --fp8 (train.py's flag)."""
    import argparse

    import bench.train_step as ts
    import configurator

    args = argparse.Namespace(case="z2all:fp8=rowwise", dry_run=True, data_dir="D", micro_batch=2, ga=2,
                              z2all_set=[], round=0, steps=1, warmup=1)
    argv = ts.z2all_argv(args, "OUT")
    assert argv[-1] == "--fp8=rowwise"
    assert configurator.build_config(argv).model.fp8 == "rowwise"
