"""bench/ddp.py helpers that need no GPU: overlap measure, arguments, the per-case driver (fresh processes)."""
import json

import pytest

import bench.ddp as b


def test_overlap_fraction():
    kernels = [("gemm", 0, 10), ("ncclAllReduce", 5, 15), ("gemm2", 12, 13), ("ncclAllReduce", 20, 30)]
    # comm 20 units; concurrent with compute: [5,10) and [12,13) = 6
    assert b.overlap_fraction(kernels) == pytest.approx(6 / 20)
    assert b.overlap_fraction([("gemm", 0, 1)]) is None
    assert b.overlap_fraction([("nccl", 0, 4), ("a", 0, 2), ("b", 1, 3)]) == pytest.approx(3 / 4)


def test_args():
    args = b.parse_args(["--dry_run"])
    assert args.shape == "dry" and args.steps == 2
    with pytest.raises(SystemExit):
        b.parse_args(["--cases=ours,nope"])


def test_case_and_nproc_args(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert b.is_driver(b.parse_args(["--dry_run", "--nproc_per_node=2"]))
    assert not b.is_driver(b.parse_args(["--dry_run", "--case=torch"]))
    with pytest.raises(SystemExit):
        b.parse_args(["--case=nope"])
    with pytest.raises(SystemExit):
        b.parse_args(["--nproc_per_node=0"])
    with pytest.raises(SystemExit):
        b.parse_args(["--nproc"])  # no abbreviations: the driver filters flags by their exact names
    monkeypatch.setenv("RANK", "0")
    assert not b.is_driver(b.parse_args(["--dry_run"]))
    with pytest.raises(SystemExit):  # under torchrun the world size is torchrun's
        b.parse_args(["--nproc_per_node=2"])


def test_worker_argv_drops_driver_flags():
    argv = ["--dry_run", "--nproc_per_node=2", "--cases", "ours,torch", "--steps=3", "--nproc_per_node", "4",
            "--cases=ours"]
    assert b.worker_argv(argv, "torch") == ["--dry_run", "--steps=3", "--case=torch"]


def test_summarize():
    recs = [{"case": "ours", "tokens_per_s_per_gpu": 3.0}, {"case": "torch", "tokens_per_s_per_gpu": 2.0},
            {"case": "ours_no_overlap", "tokens_per_s_per_gpu": 1.5}]
    assert b.summarize(recs, 4) == {"summary": True, "world": 4, "ours_over_torch": 1.5, "overlap_speedup": 2.0}


def test_launch_cases_fresh_process_per_case(tmp_path, capsys):
    """Each case runs in its own torchrun; rank 0's record is kept, a failing case is reported, not fatal."""
    script = tmp_path / "fake_bench.py"
    script.write_text(
        "import json, os, sys\n"
        "case = [a.split('=', 1)[1] for a in sys.argv if a.startswith('--case=')][0]\n"
        "assert '--cases=x' not in sys.argv and '--nproc_per_node=1' not in sys.argv\n"
        "print('log line', flush=True)\n"
        "if case == 'bad':\n"
        "    sys.exit(3)\n"
        "print(json.dumps({'case': case, 'pid': os.getpid(), 'world': int(os.environ['WORLD_SIZE'])}))\n"
        "print(json.dumps({'case': 'summary'}))\n")
    records, failed = b.launch_cases(str(script), ["--nproc_per_node=1", "--cases=x"], ["a", "bad", "c"], 1)
    assert [r["case"] for r in records] == ["a", "c"] and failed == ["bad"]
    assert records[0]["pid"] != records[1]["pid"] and records[0]["world"] == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [json.dumps(r) for r in records]  # stdout: the records only
    assert "log line" in out.err and "case bad failed" in out.err
