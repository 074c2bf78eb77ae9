"""bench/trace_report.py on a small hand-made Chrome trace: idle time, categories and launch sites."""
import gzip
import json

import pytest

import bench.trace_report as tr


def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur, "args": args}


def _trace():
    """One step: a GEMM launched from model/modeling.py, then (after 5 us idle) a copy from ddp code that
    overlaps an elementwise kernel on another stream."""
    return [
        _x("python_function", "model/modeling.py(93): forward", 0, 50),
        _x("python_function", "torch/nn/modules/linear.py(125): forward", 1, 40),  # not ours: skipped
        _x("cpu_op", "aten::mm", 2, 10),
        _x("cuda_runtime", "cudaLaunchKernel", 3, 2, correlation=7),
        _x("python_function", "parallel/ddp.py(200): _hook", 60, 30),
        _x("cpu_op", "aten::copy_", 61, 10),
        _x("cuda_runtime", "cudaLaunchKernel", 62, 2, correlation=8),
        _x("cuda_runtime", "cudaLaunchKernel", 95, 2, correlation=9),  # outside any op or project frame
        _x("kernel", "nvjet_tst_128x256_h_bz_TNT", 100, 20, tid=7, correlation=7),
        _x("kernel", "void at::native::direct_copy_kernel_cuda", 125, 10, tid=7, correlation=8),
        _x("kernel", "void at::native::vectorized_elementwise_kernel<4>", 130, 10, tid=8, correlation=9),
        _x("kernel", "_rmsnorm_fwd_kernel", 140, 5, tid=7, correlation=10),
    ]


def test_span_categories_and_sites(tmp_path):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": _trace()}, f)
    rows = tr.report(str(path), steps=1, top=10)
    span = rows[0]
    assert span == {"row": "span", "step_ms": 0.045, "busy_ms": 0.04, "idle_ms": 0.005, "kernels_per_step": 4}
    cats = {r["category"]: r["ms"] for r in rows if r["row"] == "category"}
    assert cats == {"gemm": 0.02, "copy": 0.01, "elementwise": 0.01, "triton:_rmsnorm_fwd_kernel": 0.005}
    sites = {r["kernel"]: (r["op"], r["frame"]) for r in rows if r["row"] == "site"}
    assert sites["nvjet_tst_128x256_h_bz_TNT"] == ("aten::mm", "model/modeling.py(93): forward")
    assert sites["void at::native::direct_copy_kernel_cuda"] == ("aten::copy_", "parallel/ddp.py(200): _hook")
    assert sites["void at::native::vectorized_elementwise_kernel<4>"] == ("-", "-")
    assert sites["_rmsnorm_fwd_kernel"] == ("-", "-")  # no runtime call carries its correlation id


def test_trace_without_kernels_is_an_error(tmp_path):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps({"traceEvents": [_x("cpu_op", "aten::mm", 0, 1)]}))
    with pytest.raises(ValueError, match="no GPU kernel events"):
        tr.report(str(path), steps=1, top=5)
