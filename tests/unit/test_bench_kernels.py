"""bench/kernels.py --dry_run on the CPU: every op's cases run and print their records (the logic only)."""
import json

import bench.kernels as kernels


def test_dry_run_prints_one_record_per_case(capsys):
    assert kernels.main(["--dry_run", "--no_compile", "--ops=rmsnorm,swiglu,cross_entropy", "--warmup=1",
                         "--rep=1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "copy_gbps" in lines[0]
    recs = {(r["op"], r["impl"]): r for r in lines[1:] if "impl" in r}
    for op in ("rmsnorm", "swiglu", "cross_entropy"):
        assert {"z2all", "eager", "compile", "liger"} <= {impl for o, impl in recs if o == op}
        ours = recs[(op, "z2all")]
        assert ours["ms_fwd"] > 0 and ours["ms_fwdbwd"] > 0, ours
        assert recs[(op, "compile")]["skipped"] == "compile disabled"
    assert recs[("rmsnorm", "z2all")]["gbps_fwd"] > 0


def test_device_rounds_keeps_the_fastest_reading(monkeypatch):
    readings = iter([3.0, 9.0, 1.0, 8.0, 2.0, 7.0])  # (fwd, fwdbwd) per round, three rounds
    monkeypatch.setattr(kernels, "device_ms", lambda fn: next(readings))
    case = kernels.Case("rmsnorm", "z2all", None, None, bytes_fwd=10**6, bytes_fwdbwd=2 * 10**6)
    rec = {}
    kernels.device_rounds([(case, rec, (None, None))], copy_gbps=1.0)
    assert rec["ms_fwd_dev"] == 1.0 and rec["ms_fwdbwd_dev"] == 7.0
    assert rec["gbps_fwd_dev"] == 1.0  # 1e6 bytes in 1 ms
