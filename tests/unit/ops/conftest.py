"""Run the Triton kernels of model/ops on the CPU through the Triton interpreter, in a child process.

Triton picks interpreter or compiled mode for its own library functions (tl.sum, ...) when it is first imported,
and other tests (anything importing transformers, say) may import it first in compiled mode. So tests marked
`z2all_interp` never run in the main pytest process: each test file has one launcher test that re-runs the file's
marked tests in a child pytest with TRITON_INTERPRET=1 set before anything is imported (see _check.py). The main
process never sets TRITON_INTERPRET, so GPU tests in the same session keep compiled kernels.
"""
import os

CHILD_ENV = "Z2ALL_OPS_INTERPRETER_CHILD"


def pytest_configure(config):
    config.addinivalue_line("markers", "z2all_interp: runs only in the TRITON_INTERPRET=1 child process")


def pytest_collection_modifyitems(config, items):
    if os.environ.get(CHILD_ENV) == "1":
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("z2all_interp") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
