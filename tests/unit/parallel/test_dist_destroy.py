"""parallel.dist.destroy() frees the process group, and with it gloo's threads, once nothing else holds it; and
tasks.lifecycle.release_frames lets go of what a traceback holds (train.py's main uses both before the exit:
issue 27, tests/dist/test_exit.py)."""
import gc
import os
import subprocess
import sys
import traceback
import weakref

from tasks.lifecycle import release_frames
from tests.conftest import ROOT

CHILD = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import torch, torch.distributed as dist
from parallel.dist import destroy, init_distributed

def gloo_workers():
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return names.count("pt_gloo_runloop")

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0")  # one process: the store's port is the OS's pick
ctx = init_distributed(device="cpu", env={"RANK": "0", "WORLD_SIZE": "1"})
dist.all_reduce(torch.ones(2), group=ctx.group)
print(destroy(), gloo_workers())  # ctx still holds the group: unregistered, not freed, its threads alive
ctx = None
print(destroy(), gloo_workers())  # freed: its destructor joined the threads
print(destroy())  # idempotent
"""


def test_destroy_frees_the_group_once_nothing_holds_it():
    proc = subprocess.run([sys.executable, "-c", CHILD, ROOT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    held, freed, again = proc.stdout.split("\n")[:3]
    assert held.split()[0] == "False" and int(held.split()[1]) > 0, proc.stdout
    assert freed == "True 0" and again == "True", proc.stdout


class _Run:
    pass


def _fail(run):
    raise RuntimeError("step failed")


def test_release_frames_drops_what_a_traceback_holds_and_keeps_its_lines():
    run = _Run()
    alive = weakref.ref(run)
    try:
        try:
            _fail(run)
        except RuntimeError as inner:
            raise ValueError("while stopping") from inner
    except ValueError as e:
        error = e
    del run
    gc.collect()
    assert alive() is not None  # the frame of _fail (in the cause's traceback) holds the run
    release_frames(error)
    gc.collect()
    assert alive() is None
    text = "".join(traceback.format_exception(error))
    assert "_fail(run)" in text and "step failed" in text and "while stopping" in text
    release_frames(None)
