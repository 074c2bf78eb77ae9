"""The Triton-interpreter launcher fails a file whose kernel tests failed, vanished or were all skipped."""
import pytest

from tests.triton_interp import HAS_TRITON, ROOT, ChildRun, file_verdict, outcomes_by_module, run_file_in_interpreter

REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.unit.ops.test_a" name="test_ok[1]"/>
<testcase classname="tests.unit.ops.test_a.TestGroup" name="test_in_class"/>
<testcase classname="tests.unit.ops.test_b" name="test_bad"><failure message="boom"/></testcase>
<testcase classname="tests.unit.ops.test_b" name="test_ok"/>
<testcase classname="tests.unit.ops.test_c" name="test_skip"><skipped message="no"/></testcase>
</testsuite></testsuites>"""


def _verdict(name: str, returncode: int = 1) -> str | None:
    run = ChildRun("pytest ...", returncode, "", outcomes_by_module(REPORT))
    return file_verdict(run, f"{ROOT}/tests/unit/ops/{name}.py")


def test_verdicts():
    assert outcomes_by_module(REPORT)["tests.unit.ops.test_a"].passed == 2  # the class folds into its module
    assert _verdict("test_a") is None
    assert "test_b.py failed: test_bad" in _verdict("test_b")
    assert "no z2all_interp test of test_c.py passed (1 skipped" in _verdict("test_c").replace(" in the interpreter child", "")
    assert "vanished" in _verdict("test_gone", returncode=5)


@pytest.mark.skipif(not HAS_TRITON, reason="the launcher skips without triton")
def test_a_file_without_kernel_tests_fails(tmp_path):
    """A real child over a directory whose kernel tests vanished: pytest exits 5, the launcher fails."""
    test_file = tmp_path / "test_nothing.py"
    test_file.write_text("def test_plain():\n    pass\n")
    with pytest.raises(pytest.fail.Exception, match="vanished"):
        run_file_in_interpreter(str(test_file))
