"""PowerSGD on one process: the plan (what is compressed, batched how), orthogonalisation, the state's checkpoint
format and its checks, the wrappers' forwarding, build_hook and the config keys."""
import io
import math

import pytest
import torch
from torch import nn

from configurator import build_config
from parallel.comm_hooks.bucket import BucketParam, GradBucket
from parallel.comm_hooks.powersgd import STATE_FORMAT, PowerSGDState, make_plan, orthogonalize_, powersgd_hook
from parallel.comm_hooks.registry import build_hook
from parallel.config import DDPConfig


def _params(shapes):
    out, offset = [], 0
    for k, shape in enumerate(shapes):
        n = math.prod(shape)
        out.append(BucketParam(f"p{k}", nn.Parameter(torch.zeros(shape)), torch.Size(shape), offset, offset + n))
        offset += n
    return tuple(out)


def test_plan_compresses_matrices_that_pay_and_batches_them_by_shape():
    params = _params([(32, 24), (17,), (32, 24), (20, 30, 2), (64, 3), (3, 3), ()])
    plan = make_plan(params, 4, 2.0)
    assert [(g.n, g.m, g.r, [p.name for p in g.params]) for g in plan.groups] == [
        (32, 24, 4, ["p0", "p2"]), (20, 60, 4, ["p3"])]
    # 1-D, skinny ((64+3)·3·2 > 192), small ((3+3)·3·2 > 9) and 0-D stay uncompressed, in bucket order
    assert [p.name for p in plan.uncompressed] == ["p1", "p4", "p5", "p6"]
    assert (plan.m_numel, plan.p_numel, plan.q_numel) == (2 * 768 + 1200, 2 * 32 * 4 + 20 * 4, 2 * 24 * 4 + 60 * 4)
    assert plan.u_numel == 17 + 192 + 9 + 1
    assert plan.layout[0] == ["p0", 32, 24, 4]
    # the rank is capped by the matrix, and the rate decides: rate 0.5 compresses the skinny one at r = 3
    skinny = make_plan(_params([(64, 3)]), 4, 0.5)
    assert [(g.n, g.m, g.r) for g in skinny.groups] == [(64, 3, 3)]


def test_orthogonalize_gives_orthonormal_columns_or_zeros():
    torch.manual_seed(0)
    full = torch.randn(3, 40, 4)
    q, _ = torch.linalg.qr(full)
    got = orthogonalize_(full.clone())
    torch.testing.assert_close(got.transpose(1, 2) @ got, torch.eye(4).expand(3, 4, 4), atol=2e-6, rtol=0)
    torch.testing.assert_close(got.abs(), q.abs(), atol=1e-5, rtol=0)  # QR up to column signs
    # rank 1 plus noise far below fp32's resolution: one direction survives, the others are dropped (not noise)
    low = (torch.randn(2, 50, 1) @ torch.randn(2, 1, 4) + 1e-9 * torch.randn(2, 50, 4)).contiguous()
    got = orthogonalize_(low)
    assert (got[:, :, 1:] == 0).all()
    torch.testing.assert_close(got[:, :, 0].norm(dim=1), torch.ones(2))
    # zero columns start from unit vectors: finite, and a warm start from them can recover
    zero = orthogonalize_(torch.zeros(1, 5, 2))
    assert torch.equal(zero[0], torch.eye(5, 2))


def _bucket(world_size=1):
    params = _params([(8, 6), (5,)])
    return GradBucket(0, torch.arange(53.0), torch.zeros(53), params, 0.5, None, 0, world_size)


def test_one_process_is_a_scaled_copy_and_reports_no_compression():
    state = PowerSGDState(start_iter=0)
    bucket = _bucket()
    out = powersgd_hook(state, bucket).wait()
    assert torch.equal(out, torch.arange(53.0) * 0.5)
    assert state.metrics() == {"comm_compression_ratio": 1.0, "comm_bytes_sent": 53 * 4.0}


def test_state_dict_loads_weights_only_and_checks_its_format():
    state = PowerSGDState(rank=2, seed=5)
    assert state.metrics() == {}
    blob = io.BytesIO()
    torch.save(state.state_dict(), blob)
    blob.seek(0)
    sd = torch.load(blob, weights_only=True)
    assert sd["format"] == STATE_FORMAT and sd["settings"]["seed"] == 5 and sd["buckets"] == {}
    other = PowerSGDState(rank=2, seed=5)
    other.load_state_dict(sd)
    assert other.state_dict() == sd
    with pytest.raises(ValueError, match="another --comm_hook"):
        other.load_state_dict({"prescale": True})
    with pytest.warns(RuntimeWarning, match="settings differ"):
        PowerSGDState(rank=4, seed=5).load_state_dict(sd)


def test_a_loaded_bucket_is_passed_on_until_it_is_reduced():
    q, err = torch.randn(10), torch.randn(48)
    sd = {"format": STATE_FORMAT, "settings": PowerSGDState().settings(), "world_size": 2, "rank": 1,
          "buckets": {3: {"step": 7, "layout": [["w", 8, 6, 1]], "q": q, "error": err}}}
    state = PowerSGDState()
    state.load_state_dict(sd)
    again = state.state_dict()
    assert again["world_size"] == 2 and again["rank"] == 1
    assert torch.equal(again["buckets"][3]["q"], q) and torch.equal(again["buckets"][3]["error"], err)


def test_post_reduce_callback_sees_each_reduced_bucket_and_the_state_stays_the_hooks():
    """The optimizer's seam: the DDP calls the registered callback once per bucket, after that bucket's hook ran;
    ddp.comm_hook.state is the hook's own state (no forwarding wrapper), so checkpoints and metrics read it."""
    from parallel.ddp import DistributedDataParallel
    from tests.support.toy import batch, loss_fn, make_model, single_ctx

    ddp = DistributedDataParallel(make_model(torch.float32), DDPConfig(bucket_size=100, comm_hook="powersgd",
                                                                       powersgd_start_iter=0), single_ctx())
    seen = []
    ddp.register_post_reduce(lambda bucket: seen.append((bucket.index, ddp.comm_hook.state.metrics() != {})))
    ddp.zero_grad_buffer()
    loss_fn(ddp, *batch(0, torch.float32)).backward()
    ddp.finish_grad_sync()
    assert sorted(i for i, _ in seen) == [b.index for b in ddp.buckets] and all(m for _, m in seen)
    state = ddp.comm_hook.state
    assert isinstance(state, PowerSGDState) and state.metrics() != {}
    with pytest.warns(RuntimeWarning, match="settings differ"):
        state.load_state_dict(PowerSGDState(rank=ddp.config.powersgd_rank, seed=9).state_dict())
    assert state.seed == 0  # the run's own settings win; buckets came from the checkpoint
    assert build_hook(DDPConfig())[0].metrics() == {}
    with pytest.raises(TypeError, match="state_dict"):
        ddp.register_comm_hook(object(), powersgd_hook)

def test_build_hook_reads_the_powersgd_keys():
    cfg = DDPConfig(comm_hook="powersgd", powersgd_rank=2, powersgd_start_iter=0, powersgd_min_compression_rate=1.5,
                    powersgd_error_feedback=False, powersgd_warm_start=False, powersgd_seed=7)
    state, hook = build_hook(cfg)
    assert hook is powersgd_hook
    assert state.settings() == {"rank": 2, "start_iter": 0, "min_compression_rate": 1.5, "use_error_feedback": False,
                                "warm_start": False, "orthogonalization_epsilon": 0.0, "seed": 7}


@pytest.mark.parametrize("flag, message", [
    ("--powersgd_rank=0", "--powersgd_rank must be at least 1"),
    ("--powersgd_start_iter=-1", "cannot be negative"),
    ("--powersgd_min_compression_rate=0", "--powersgd_min_compression_rate must be positive"),
    ("--powersgd_seed=-3", r"--powersgd_seed must be in \[0, 2\*\*63\)"),
])
def test_config_rejects_bad_powersgd_values(flag, message):
    with pytest.raises(ValueError, match=message):
        build_config(["--comm_hook=powersgd", flag])


def test_zero1_accepts_powersgd():
    cfg = build_config(["--use_distributed_optimizer", "--comm_hook=powersgd", "--powersgd_rank=2"])
    assert cfg.ddp.comm_hook == "powersgd" and cfg.ddp.powersgd_rank == 2
    with pytest.raises(ValueError, match="needs --comm_hook=reduce_scatter"):
        build_config(["--use_distributed_optimizer", "--comm_hook=bf16_allreduce"])
