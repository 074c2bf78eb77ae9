"""The fused ops' graph breaks (model/ops/_triton_utils.run_outside_compile) in a fresh process: importing the
project does not import torch._dynamo (1.7 s of every process start), and a torch.compile that meets a fused op
for the first time inside its trace still runs the op eagerly on real tensors, never traced on fake ones."""
import subprocess
import sys

from tests.conftest import ROOT

CHILD = r"""
import sys
import torch
import train  # noqa: F401 - the whole project, as a train.py process imports it
assert "torch._dynamo" not in sys.modules, "importing the project imported torch._dynamo"
from model.ops._triton_utils import apply_eager

seen = []

class Twice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        seen.append(type(x).__name__)
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2

x = torch.randn(5, requires_grad=True)
assert torch.equal(apply_eager(Twice, x), x * 2) and seen == ["Tensor"]  # no dynamo: a plain call
assert "torch._dynamo" not in sys.modules
f = torch.compile(lambda t: apply_eager(Twice, t).sin() + 1, backend="aot_eager")
y = f(x)
y.sum().backward()
assert torch.allclose(y, (x * 2).sin() + 1) and torch.allclose(x.grad, 2 * torch.cos(2 * x))
assert seen == ["Tensor", "Tensor"], seen  # the compiled call ran the Function on a real tensor
print("ok")
"""


def test_the_graph_breaks_are_made_lazily_and_still_break_the_first_trace():
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
