"""The per-bucket grad norm recorded during the backward on CUDA (the comm hook's callback stream) equals the
norm of all grads computed after the sync, bit for bit (skipped without CUDA)."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from optimizer import build_optimizer  # noqa: E402
from optimizer.clip import squared_norm  # noqa: E402
from optimizer.config import OptimizerConfig  # noqa: E402
from parallel.config import DDPConfig  # noqa: E402
from parallel.ddp import DistributedDataParallel  # noqa: E402
from parallel.dist import DistContext  # noqa: E402
from tests.support.toy import batch, loss_fn, make_model  # noqa: E402


@pytest.mark.parametrize("fp32_grads", [True, False])
def test_recorded_norm_equals_norm_after_sync(fp32_grads):
    dev = torch.device("cuda")
    ctx = DistContext(0, 1, 0, dev, None, None)
    ddp = DistributedDataParallel(make_model(torch.bfloat16).cuda(),
                                  DDPConfig(bucket_size=100, grad_reduce_in_fp32=fp32_grads), ctx)
    opt = build_optimizer(OptimizerConfig(warmup_iters=0, grad_clip=0.05), ddp, torch.bfloat16, ctx)
    ddp.register_post_reduce(opt.post_reduce_callback)
    for it in range(3):
        ddp.zero_grad_buffer()
        x, y = batch(it, torch.bfloat16)
        loss_fn(ddp, x.to(dev), y.to(dev)).backward()
        ddp.finish_grad_sync()
        assert len(opt._bucket_norms) == len(opt.regions) > 1
        want = squared_norm([g for r in opt.regions for g in r.grad_views()], dev)
        _, norm = opt.step()
        assert torch.equal(norm, want.sqrt()), (it, norm, want.sqrt())
