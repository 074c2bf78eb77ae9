"""A finished DDP (and its optimizer) is garbage-collected after `del`: benchmarks run cases back to back."""
import gc
import weakref

import pytest
import torch
from torch import nn

from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from parallel.dist import init_distributed


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        return self.b(self.norm(torch.tanh(self.a(x)))).float().square().mean()


def _run_and_drop(dtype, opt_kw=None, prehooks=False):
    """Build model + DDP (+ optimizer), take two steps, delete them; weakrefs to what must be freed."""
    ctx = init_distributed("cpu", env={})
    torch.manual_seed(0)
    model = Net().to(dtype)
    opt_kw = None if opt_kw is None else dict(opt_kw)
    zero = bool(opt_kw and opt_kw.pop("use_distributed_optimizer", False))
    ddp = DistributedDataParallel(model, DDPConfig(bucket_size=128, comm_hook="reduce_scatter" if zero else "allreduce",
                                                   use_distributed_optimizer=zero), ctx)
    ddp.broadcast_params()
    opt = None
    if opt_kw is not None:
        from optimizer import build_optimizer
        from optimizer.config import OptimizerConfig

        opt = build_optimizer(OptimizerConfig(learning_rate=1e-3, **opt_kw), ddp, dtype, ctx)
        ddp.register_post_reduce(opt.post_reduce_callback)
    if prehooks:
        ddp._install_prehooks()  # with world 1 start_param_sync never installs them; they must not leak either
    x = torch.randn(3, 6).to(dtype)
    for _ in range(2):
        ddp.zero_grad_buffer()
        ddp(x).backward()
        ddp.finish_grad_sync()
        if opt is not None:
            opt.step()
    refs = [weakref.ref(o) for o in (ddp, model, model.a.weight, ddp.buffers[0].grad_data, opt) if o is not None]
    del model, ddp, opt, x
    gc.collect()
    return refs


@pytest.mark.parametrize("prehooks", [False, True])
def test_ddp_freed_after_del(prehooks):
    refs = _run_and_drop(torch.float32, prehooks=prehooks)
    assert [r() is None for r in refs] == [True] * len(refs)


@pytest.mark.parametrize("opt_kw", [
    dict(),
    dict(use_distributed_optimizer=True),
    dict(use_distributed_optimizer=True, overlap_param_gather=True),
    dict(use_distributed_optimizer=True, overlap_param_gather=True, overlap_optim_step=True, grad_clip=0.0),
], ids=["mixed", "zero1", "zero1_overlap", "zero1_overlap_optim"])
def test_ddp_and_optimizer_freed_after_del(opt_kw):
    refs = _run_and_drop(torch.bfloat16, opt_kw)
    assert [r() is None for r in refs] == [True] * len(refs)
