"""bench/fused_kernels.py --dry_run on the CPU: every op's cases run and print their records (the logic only)."""
import json

import bench.fused_kernels as kernels


def test_dry_run_prints_one_record_per_case(capsys):
    assert kernels.main(["--dry_run", "--no_compile", "--ops=rmsnorm,swiglu,cross_entropy", "--warmup=1",
                         "--rep=1", "--ce_chunk_sizes=8,16"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "copy_gbps" in lines[0] and lines[0]["spec_gbps"] is None  # the CPU has no data-sheet entry
    recs = {(r["op"], r["impl"]): r for r in lines[1:] if "impl" in r}
    for op in ("rmsnorm", "swiglu", "cross_entropy"):
        assert {"z2all", "eager", "compile", "liger"} <= {impl for o, impl in recs if o == op}
        ours = recs[(op, "z2all")]
        assert ours["ms_fwdbwd"] > 0 and ours["spread_fwdbwd"] >= 0, ours
        assert recs[(op, "compile")]["skipped"] == "compile disabled"
    assert recs[("rmsnorm", "z2all")]["ms_fwd"] > 0 and recs[("rmsnorm", "z2all")]["gbps_fwd"] > 0
    # the fused cross-entropy is compared forward+backward only, at every asked chunk size
    assert "ms_fwd" not in recs[("cross_entropy", "z2all")]
    assert recs[("cross_entropy", "z2all_c8")]["ms_fwdbwd"] > 0 and ("cross_entropy", "z2all_c16") in recs
    summaries = {r["op"]: r["verdicts"] for r in lines if r.get("summary") == "z2all against each impl"}
    assert "eager/fwdbwd" in summaries["cross_entropy"] and "eager/fwd" not in summaries["cross_entropy"]
    assert "eager/fwd" in summaries["rmsnorm"]


def test_verdicts_say_on_par_inside_the_spread():
    recs = [{"impl": "z2all", "ms_fwdbwd": 1.00, "spread_fwdbwd": 3.0},
            {"impl": "liger", "ms_fwdbwd": 1.02, "spread_fwdbwd": 1.0},
            {"impl": "eager", "ms_fwdbwd": 1.50, "spread_fwdbwd": 1.0},
            {"impl": "compile", "ms_fwdbwd": 0.90, "spread_fwdbwd": 1.0}]
    v = kernels.verdicts(recs)
    assert v["liger/fwdbwd"].startswith("on par")
    assert v["eager/fwdbwd"].startswith("z2all faster")
    assert v["compile/fwdbwd"].startswith("z2all slower")


def test_spec_bandwidth_by_device_name():
    assert kernels.spec_gbps("NVIDIA H100 80GB HBM3") == 3350.0
    assert kernels.spec_gbps("NVIDIA H200") == 4800.0
    assert kernels.spec_gbps("NVIDIA H100 PCIe") == 2000.0


def test_timed_rounds_keep_the_fastest_reading_and_the_spread():
    readings = iter([3.0, 9.0, 1.0, 8.0, 2.0, 7.0])  # (fwd, fwdbwd) per round, three rounds
    case = kernels.Case("rmsnorm", "z2all", None, None, bytes_fwd=10**6, bytes_fwdbwd=2 * 10**6)
    rec = {}
    kernels.timed_rounds([(case, rec, ("f", "fb"))], lambda fn: next(readings), "_dev", copy_gbps=1.0,
                         spec=2.0)
    assert rec["ms_fwd_dev"] == 1.0 and rec["ms_fwdbwd_dev"] == 7.0
    assert rec["spread_fwd_dev"] == 200.0  # (3 - 1) / 1
    assert rec["gbps_fwd_dev"] == 1.0 and rec["frac_spec_fwd_dev"] == 0.5  # 1e6 bytes in 1 ms
