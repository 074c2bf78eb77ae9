"""Test setup: the repo root on sys.path, one torch thread per process (CI has 2 cores), and the Triton
interpreter tests kept out of the main process (tests/triton_interp.py)."""
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


def pytest_collection_modifyitems(config, items):
    deselect_interp_tests(config, items)
