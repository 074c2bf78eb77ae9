"""The DDP on one process without a group: grads, no_sync, unused params, state errors, init_distributed."""
import pytest
import torch
from torch import nn

from parallel.comm_hooks.default import DefaultHookState, allreduce_hook
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from parallel.dist import DistContext, init_distributed


def _ctx():
    return DistContext(0, 1, 0, torch.device("cpu"), None, None)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 7)
        self.b = nn.Linear(7, 3)
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)
        self.spare = nn.Parameter(torch.zeros(2))

    def forward(self, x, use_spare=False):
        y = self.b(torch.tanh(self.a(x))) * self.frozen
        return y.sum() + (self.spare.sum() if use_spare else 0.0)


def _pair(**cfg):
    torch.manual_seed(0)
    ref = Net()
    net = Net()
    net.load_state_dict(ref.state_dict())
    ddp = DistributedDataParallel(net, DDPConfig(bucket_size=40, **cfg), _ctx())
    return ref, net, ddp


def test_init_distributed_without_env():
    ctx = init_distributed(device="cpu", env={})
    assert (ctx.rank, ctx.world_size, ctx.group) == (0, 1, None) and ctx.is_main
    ctx.barrier()
    with pytest.raises(ValueError, match="device"):
        init_distributed(device="tpu", env={})


@pytest.mark.parametrize("overlap", [True, False])
def test_grads_and_no_sync(overlap):
    ref, net, ddp = _pair(overlap_grad_reduce=overlap)
    xs = torch.randn(3, 4, 5)
    for x in xs:
        ref(x, True).backward()
    ddp.zero_grad_buffer()
    with ddp.no_sync():
        for x in xs[:-1]:
            ddp(x, True).backward()
    ddp(xs[-1], True).backward()
    ddp.finish_grad_sync()
    for (n, p), (_, q) in zip(ref.named_parameters(), net.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(ddp.main_grad(q), p.grad, rtol=1e-6, atol=1e-6)
            assert q.grad is None
    assert len(ddp.buffers) == 1 and len(ddp.buffers[0].buckets) > 1
    with pytest.raises(ValueError, match="frozen"):
        ddp.main_grad(net.frozen)


def test_unused_param_error_and_zeros():
    _, net, ddp = _pair()
    ddp.zero_grad_buffer()
    ddp(torch.randn(4, 5)).backward()
    with pytest.raises(RuntimeError, match="spare"):
        ddp.finish_grad_sync()
    _, net, ddp = _pair(check_for_unused_params=False)
    ddp.zero_grad_buffer()
    ddp(torch.randn(4, 5)).backward()
    ddp.finish_grad_sync()
    assert bool((ddp.main_grad(net.spare) == 0).all())


def test_state_machine_errors():
    _, net, ddp = _pair()
    ddp.zero_grad_buffer()
    ddp(torch.randn(4, 5), True).backward()
    ddp.finish_grad_sync()
    with pytest.raises(RuntimeError, match="zero_grad_buffer"):
        ddp(torch.randn(4, 5), True).backward()
    ddp.zero_grad_buffer()
    with ddp.no_sync():
        with pytest.raises(RuntimeError, match="no_sync"):
            ddp.finish_grad_sync()


def test_custom_hook_and_grad_scale():
    calls = []

    def hook(state, bucket):
        calls.append(bucket.index)
        return allreduce_hook(state, bucket)

    ref, net, ddp = _pair()
    ddp.register_comm_hook(DefaultHookState(prescale=False), hook)
    ddp.set_grad_scale(0.5)
    ddp.zero_grad_buffer()
    x = torch.randn(4, 5)
    ddp(x, True).backward()
    ddp.finish_grad_sync()
    ref(x, True).backward()
    assert calls == list(range(len(ddp.buffers[0].buckets)))
    torch.testing.assert_close(ddp.main_grad(net.a.weight), 0.5 * ref.a.weight.grad)


def test_hook_contract_global_index_and_param_views():
    """Two buffers (fp32 and bf16 params): bucket indices run across both in launch order, each BucketParam views
    its param's main_grad, with_grad keeps the index, and comm_hook hands back what was registered."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    net[1].to(torch.bfloat16)
    ddp = DistributedDataParallel(net, DDPConfig(bucket_size=5), _ctx())
    assert len(ddp.buffers) == 2 and len(ddp.buckets) == 3
    assert [b.index for b in ddp.buckets] == list(range(sum(len(buf.buckets) for buf in ddp.buffers)))
    seen = []

    def hook(state, bucket):
        seen.append(bucket.index)
        for p in bucket.params:
            assert p.view(bucket.grad_data).data_ptr() == ddp.main_grad(p.param).data_ptr()
            assert p.shape == p.param.shape and p.numel == p.param.numel()
        copy = bucket.with_grad(bucket.grad_data.clone(), 1.0)
        assert copy.index == bucket.index and copy.grad_scale == 1.0 and bucket.grad_scale == 1.0
        return allreduce_hook(state, bucket)

    state = DefaultHookState()
    ddp.register_comm_hook(state, hook)
    assert ddp.comm_hook == (state, hook)
    ddp.zero_grad_buffer()
    x = torch.randn(4, 5)
    net[1](net[0](x).bfloat16()).float().sum().backward()
    ddp.finish_grad_sync()
    assert seen == [b.index for b in ddp.buckets]
    # buffers in creation order (fp32 first), each in reverse registration order
    assert [p.name for b in ddp.buckets for p in b.params] == ["0.bias", "0.weight", "1.bias", "1.weight"]
