"""Test setup: the repo root on sys.path, one torch thread per process (CI has 2 cores), the Triton interpreter
tests kept out of the main process (tests/triton_interp.py), and every test of tests/dist marked `slow`.

The tiers: tests/unit (in-process, CPU), tests/bench (the bench scripts' logic, --dry_run on the CPU; the ones that
start processes are marked slow), tests/dist (gloo process groups and real train.py / CLI / monitor processes:
all slow), tests/gpu (skipped without CUDA). `python -m pytest -q -m "not slow"` is the inner loop."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

torch.set_num_threads(1)

from tests.triton_interp import deselect_interp_tests, register_marker  # noqa: E402


def pytest_configure(config):
    register_marker(config)


DIST = os.path.join(ROOT, "tests", "dist") + os.sep


def pytest_collection_modifyitems(config, items):
    deselect_interp_tests(config, items)
    for item in items:
        if str(item.path).startswith(DIST):
            item.add_marker("slow")
