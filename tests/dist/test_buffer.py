"""Buffers built by the DDP on 2 and 3 gloo ranks: layout from first principles, shards, ZeRO-1 param gather."""
import pytest
import torch

from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from tests.support.launch import run_dist
from tests.dist.test_ddp import TinyNet, make_data
from tests.support.buffer_layout import check_layout


def _layout_case(ctx):
    torch.manual_seed(0)
    net = TinyNet()
    trainable = [p for p in net.parameters() if p.requires_grad]
    ddp = DistributedDataParallel(net, DDPConfig(bucket_size=64), ctx)
    assert len(ddp.buffers) == 1 and net.frozen not in ddp.buffers[0].param_index_map
    buf = ddp.buffers[0]
    check_layout(buf, trainable, 64, ctx.world_size, False)
    for b in buf.buckets:
        assert b.numel % ctx.world_size == 0
    assert [b.index for b in ddp.buckets] == list(range(len(buf.buckets)))
    for hb, b in zip(ddp.buckets, buf.buckets):
        assert hb.group is ctx.group and hb.rank == ctx.rank and hb.world_size == ctx.world_size
        assert hb.grad_data.data_ptr() == b.grad_data.data_ptr() and hb.numel == b.numel
        assert [p.param for p in hb.params] == b.params
        for p in hb.params:
            start, end, _ = buf.param_index_map[p.param]
            assert (p.start, p.end) == (start - b.offset, end - b.offset) and p.shape == p.param.shape
    ddp_one = DistributedDataParallel(TinyNet(), DDPConfig(disable_bucketing=True), ctx)
    assert len(ddp_one.buffers[0].buckets) == 1
    return [(b.offset, b.numel) for b in buf.buckets]


def _gather_case(ctx, overlap: bool):
    """Each rank keeps only its shard of every bucket (as after a ZeRO-1 step); the gather restores the rest."""
    torch.manual_seed(0)
    ref = TinyNet()
    net = TinyNet()
    net.load_state_dict(ref.state_dict())
    ddp = DistributedDataParallel(net, DDPConfig(bucket_size=64, comm_hook="reduce_scatter",
                                                 use_distributed_optimizer=True), ctx)
    full = ddp.buffers[0].param_data.clone()
    for b in ddp.buffers[0].buckets:
        start, end = b.shard_range(ctx.rank)
        b.param_data[:start].fill_(float("nan"))
        b.param_data[end:].fill_(float("nan"))
    idx, y = make_data(3)
    launched = []
    import parallel.ddp as ddp_mod
    real = ddp_mod.all_gather

    def spy(out, inp, group, async_op):
        launched.append(next(b.index for b in ddp.buffers[0].buckets if b.param_data.data_ptr() == out.data_ptr()))
        return real(out, inp, group=group, async_op=async_op)

    ddp_mod.all_gather = spy
    try:
        ddp.start_param_sync(overlap)
    finally:
        ddp_mod.all_gather = real
    assert launched == sorted(launched, reverse=True), "first layers' (last) buckets are gathered first"
    assert ddp._gather_pending == overlap
    loss = ddp(idx, y)  # with overlap, the forward pre-hooks wait for each bucket before its first use
    ddp.finish_param_sync()
    assert torch.equal(ddp.buffers[0].param_data, full)
    torch.testing.assert_close(loss, ref(idx, y), rtol=0, atol=0)
    return True


@pytest.mark.parametrize("world", [2, 3])
def test_layout_and_param_gather(world):
    layouts = run_dist(_layout_and_gather, world)
    assert all(lay == layouts[0] for lay in layouts), "every rank has the same layout"


def _layout_and_gather(ctx):
    layout = _layout_case(ctx)
    assert _gather_case(ctx, True) and _gather_case(ctx, False)
    return layout
