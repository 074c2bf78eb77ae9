"""bench/ddp.py helpers that need no GPU: the comm/compute overlap measure and argument checks."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ddp", os.path.join(ROOT, "bench", "ddp.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_overlap_fraction():
    b = _bench()
    kernels = [("gemm", 0, 10), ("ncclAllReduce", 5, 15), ("gemm2", 12, 13), ("ncclAllReduce", 20, 30)]
    # comm 20 units; concurrent with compute: [5,10) and [12,13) = 6
    assert b.overlap_fraction(kernels) == pytest.approx(6 / 20)
    assert b.overlap_fraction([("gemm", 0, 1)]) is None
    assert b.overlap_fraction([("nccl", 0, 4), ("a", 0, 2), ("b", 1, 3)]) == pytest.approx(3 / 4)


def test_args():
    b = _bench()
    args = b.parse_args(["--dry_run"])
    assert args.shape == "dry" and args.steps == 2
    with pytest.raises(SystemExit):
        b.parse_args(["--cases=ours,nope"])
