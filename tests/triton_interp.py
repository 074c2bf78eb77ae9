"""The one launcher of Triton kernel tests on the CPU: a child pytest under the Triton interpreter.

Why a child: Triton picks interpreter or compiled mode for its own library functions (tl.sum, ...) when it is
first imported, and other tests (anything importing transformers, say) may import it first in compiled mode;
and GPU tests in the same session must keep compiled kernels, so the main process never sets TRITON_INTERPRET.

1. Mark each kernel test with ``@interp``. tests/conftest.py deselects marked tests in the main process.
2. Each file with marked tests has one launcher test that calls ``run_file_in_interpreter(__file__)``.
3. The first launcher of a directory starts one child pytest (TRITON_INTERPRET=1 and ``CHILD_ENV`` set before
   anything is imported) over that directory's marked tests, with a JUnit XML report: one interpreter start-up
   per directory instead of one per file.
4. Each launcher then fails if a marked test of its own file failed or errored, or if none of them passed:
   tests that vanish (renamed, unmarked, not collected; pytest's exit status 5) fail, they never pass quietly.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "z2all_interp"
CHILD_ENV = "Z2ALL_TRITON_INTERPRETER_CHILD"
IN_CHILD = os.environ.get(CHILD_ENV) == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None

interp = getattr(pytest.mark, MARKER)  # a Triton-kernel test: runs only inside the interpreter child


def register_marker(config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: runs only in the TRITON_INTERPRET=1 child process")


def deselect_interp_tests(config, items: list) -> None:
    """In the main process, drop the marked tests (their launchers run them in the child)."""
    if IN_CHILD:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker(MARKER) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@dataclass
class Outcome:
    passed: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass
class ChildRun:
    cmd: str
    returncode: int
    output: str
    by_module: dict[str, Outcome]


def outcomes_by_module(junit_xml: str) -> dict[str, Outcome]:
    """Test outcomes of a JUnit XML report, keyed by dotted module (``tests.unit.ops.test_rope``)."""
    out: dict[str, Outcome] = {}
    for case in ET.fromstring(junit_xml).iter("testcase"):
        module = case.get("classname", "")
        # a test in a class has the class (pytest collects Test* classes) as the last part of classname
        if module.rsplit(".", 1)[-1].startswith("Test"):
            module = module.rsplit(".", 1)[0]
        res = out.setdefault(module, Outcome())
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            res.failed.append(case.get("name", "?"))
        elif "skipped" in kinds:
            res.skipped += 1
        else:
            res.passed += 1
    return out


def file_verdict(run: ChildRun, test_file: str) -> str | None:
    """Why the marked tests of test_file did not all pass in the child, or None when they did."""
    module = os.path.relpath(os.path.abspath(test_file), ROOT)[:-3].replace(os.sep, ".")
    res = run.by_module.get(module, Outcome())
    name = os.path.basename(test_file)
    if res.failed:
        return f"interpreter tests of {name} failed: {', '.join(res.failed)}"
    if not res.passed:
        return (f"no {MARKER} test of {name} passed in the interpreter child ({res.skipped} skipped, exit status "
                f"{run.returncode}): its kernel tests vanished (renamed, unmarked or not collected) or the child "
                "failed")
    return None


def _run_child(directory: str) -> ChildRun:
    env = dict(os.environ, TRITON_INTERPRET="1", **{CHILD_ENV: "1"})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "junit.xml")
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-m", MARKER,
               f"--junitxml={report}", "-o", "junit_family=xunit2", directory]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        by_module = {}
        if os.path.isfile(report):
            with open(report, encoding="utf-8") as f:
                by_module = outcomes_by_module(f.read())
    return ChildRun(" ".join(cmd), proc.returncode, f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}", by_module)


_RUNS: dict[str, ChildRun] = {}


def run_file_in_interpreter(test_file: str) -> None:
    """Fail unless every marked test of test_file that ran in the TRITON_INTERPRET=1 child passed (and one did)."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    directory = os.path.dirname(os.path.abspath(test_file))
    if directory not in _RUNS:
        _RUNS[directory] = _run_child(directory)
    run = _RUNS[directory]
    why = file_verdict(run, test_file)
    if why:
        pytest.fail(f"{why}\n({run.cmd})\n{run.output}")


def e4m3_conversion_rounds_to_nearest_even(monkeypatch) -> None:
    """In the child, make the interpreter convert fp32 to e4m3 (tl.float8e4nv) as the GPU does; elsewhere nothing.

    The interpreter's conversion (triton/runtime/interpreter.py, _convert_float, Triton 3.x) adds the cut-off bit
    to the truncated mantissa without carrying into the exponent: 127.8 becomes 64 where the GPU's
    cvt.rn.satfinite gives 128. Tests of FP8 kernels call this (monkeypatch undoes it) so that they can compare
    codes bitwise; torch's conversion rounds to nearest even, as the GPU.
    """
    if not IN_CHILD:
        return
    import numpy as np
    import torch
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter._convert_float

    def convert(data, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.float8e4nv:
            values = torch.from_numpy(np.ascontiguousarray(data).view(np.float32))
            return values.to(torch.float8_e4m3fn).view(torch.uint8).numpy().reshape(data.shape)
        return original(data, input_dtype, output_dtype, rounding_mode)

    monkeypatch.setattr(interpreter, "_convert_float", convert)

