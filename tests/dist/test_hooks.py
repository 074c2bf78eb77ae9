"""Each comm hook matches allreduce on 2 and 3 gloo ranks (exactly, bf16 compression within bf16 tolerance)."""
import pytest
import torch

from parallel.comm_hooks.default import (DefaultHookState, allreduce_hook, bf16_compress_wrapper,
                                         reduce_scatter_hook, stream_wrapper)
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from tests.support.launch import run_dist
from tests.dist.test_ddp import TinyNet, make_data


def _step(ctx, overlap: bool, hook=None, state=None, comm_hook="allreduce", scale=None):
    """One step from a fixed init on rank-specific data; returns the DDP (its grad buffers hold the result)."""
    torch.manual_seed(0)
    ddp = DistributedDataParallel(TinyNet(), DDPConfig(bucket_size=64, overlap_grad_reduce=overlap,
                                                       comm_hook=comm_hook), ctx)
    if hook is not None:
        ddp.register_comm_hook(state or DefaultHookState(), hook)
    if scale is not None:
        ddp.set_grad_scale(scale)
    idx, y = make_data(3, seed=10 + ctx.rank)
    ddp.zero_grad_buffer()
    ddp(idx, y).backward()
    ddp.finish_grad_sync()
    return ddp


def _shards(ddp, rank):
    return [b.grad_data[slice(*b.shard_range(rank))].clone() for buf in ddp.buffers for b in buf.buckets]


def _hooks_case(ctx):
    w, r = ctx.world_size, ctx.rank
    for overlap in (True, False):
        ref = _step(ctx, overlap).buffers[0].grad_data.clone()
        ref_shards = _shards(_step(ctx, overlap), r)
        exact = {
            "stream(allreduce)": _step(ctx, overlap, stream_wrapper(allreduce_hook)),
            "tensor scale": _step(ctx, overlap, scale=torch.tensor(1.0 / w)),
        }
        for name, ddp in exact.items():
            assert torch.equal(ddp.buffers[0].grad_data, ref), name
        post = _step(ctx, overlap, allreduce_hook, DefaultHookState(prescale=False)).buffers[0].grad_data
        torch.testing.assert_close(post, ref, rtol=1e-6, atol=1e-7)
        for name, kw in {"reduce_scatter": {"hook": reduce_scatter_hook},
                         "config reduce_scatter": {"comm_hook": "reduce_scatter"},
                         "stream(reduce_scatter)": {"hook": stream_wrapper(reduce_scatter_hook)},
                         "reduce_scatter post-scale": {"hook": reduce_scatter_hook,
                                                       "state": DefaultHookState(prescale=False)}}.items():
            got = _shards(_step(ctx, overlap, **kw), r)
            for a, b in zip(got, ref_shards):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
        for name, kw in {"bf16(allreduce)": {"hook": bf16_compress_wrapper(allreduce_hook)},
                         "config bf16_allreduce": {"comm_hook": "bf16_allreduce"},
                         "stream(bf16(allreduce))": {"hook": stream_wrapper(bf16_compress_wrapper(allreduce_hook))}
                         }.items():
            got = _step(ctx, overlap, **kw).buffers[0].grad_data
            torch.testing.assert_close(got, ref, rtol=2e-2, atol=1e-3, msg=name)
            assert not torch.equal(got, ref) or w == 1, f"{name}: expected bf16 rounding"
        got = _shards(_step(ctx, overlap, bf16_compress_wrapper(reduce_scatter_hook)), r)
        for a, b in zip(got, ref_shards):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)
    return True


@pytest.mark.parametrize("world", [2, 3])
def test_hooks_match_allreduce(world):
    run_dist(_hooks_case, world)


def test_hook_state_round_trip():
    state = DefaultHookState(prescale=False)
    other = DefaultHookState()
    other.load_state_dict(state.state_dict())
    assert other.prescale is False and "group" not in state.state_dict()
