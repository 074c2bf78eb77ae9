"""bench/zero1.py without a GPU: arguments, the summary against the ZeRO-1 theory, and a dry run in process."""
import pytest

import bench.zero1 as b


def test_args(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    args = b.parse_args(["--dry_run", "--nproc_per_node=2"])
    assert args.steps == 2 and args.shape == b.DRY_SHAPE and b.is_driver(args)
    assert not b.is_driver(b.parse_args(["--case=zero1"]))
    for bad in (["--cases=ddp,nope"], ["--case=nope"], ["--nproc_per_node=0"]):
        with pytest.raises(SystemExit):
            b.parse_args(bad)


def test_summary():
    n = 2**30
    recs = {"ddp": {"params": n, "peak_mem_gib": 40.0, "tokens_per_s": 100.0},
            "zero1": {"params": n, "peak_mem_gib": 40.0 - 6.75, "tokens_per_s": 99.0},
            "zero1_overlap": {"params": n, "peak_mem_gib": 33.0, "tokens_per_s": 99.5}}
    s = b.summary(recs, 4)
    assert s["theoretical_saving_gib"] == 9.0  # 12 bytes * 2^30 params * 3/4
    assert s["saving_fraction_of_theory"] == 0.75 and s["overlap_tokens_per_s_vs_ddp"] == 0.995
    assert "measured_saving_gib" not in b.summary({"ddp": recs["ddp"]}, 4)


def test_dry_run_in_process(monkeypatch, capsys):
    """--case runs one case here (what each driver-launched torchrun does), world 1 on the CPU."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    recs = b.main(["--dry_run", "--case=zero1_overlap"])
    assert [r["case"] for r in recs] == ["zero1_overlap"] and recs[0]["world"] == 1
    assert capsys.readouterr().out.count("\n") == 2  # the record and the summary
