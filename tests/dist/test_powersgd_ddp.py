"""PowerSGD through the DDP and the optimizer on 2 gloo ranks: the warm-up is the all-reduce bit for bit; at full
rank it is the all-reduce to rounding under gradient accumulation, bf16 params, bf16 grads, a tensor grad scale,
no overlap and gradient-accumulation fusion; ZeRO-1 keeps the shards of the full result; the grad norm taken
per bucket during the backward (post_reduce) and the clipping see the decompressed grads; a resume from the
hook's, the optimizer's and the model's state is bitwise the straight run."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.distributed as dist

from model import Z2allConfig, Z2allForCausalLM
from optimizer import build_optimizer
from optimizer.config import OptimizerConfig
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from tests.dist.test_ddp import TinyNet, make_data
from tests.support.launch import run_dist
from tests.support.toy import batch, loss_fn, make_model

# rank >= every matrix's smaller side and any rate: PowerSGD then spans each gradient's whole column space
FULL_RANK = dict(comm_hook="powersgd", powersgd_rank=64, powersgd_min_compression_rate=1e-3, powersgd_start_iter=0)
FUSION_SHAPE = dict(vocab_size=96, hidden_dim=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=40,
                    max_seq_len=16)


def _tiny_grads(ctx, dtype=torch.float32, micro: int = 1, scale=None, **cfg) -> tuple[torch.Tensor, dict]:
    """One step of TinyNet on rank-specific data: the DDP's grad buffers (concatenated) and the hook's metrics."""
    torch.manual_seed(0)
    ddp = DistributedDataParallel(TinyNet().to(dtype), DDPConfig(bucket_size=64, **cfg), ctx)
    if scale is not None:
        ddp.set_grad_scale(scale)
    ddp.zero_grad_buffer()
    for m in range(micro):
        idx, y = make_data(3, seed=10 + 7 * m + ctx.rank)
        if m < micro - 1:
            with ddp.no_sync():
                ddp(idx, y.to(dtype)).float().backward()
        else:
            ddp(idx, y.to(dtype)).float().backward()
    ddp.finish_grad_sync()
    return torch.cat([b.grad_data.float() for b in ddp.buffers]), ddp.comm_hook.state.metrics()


def _fused_grads(ctx, **cfg) -> torch.Tensor:
    torch.manual_seed(0)
    net = Z2allForCausalLM(Z2allConfig(**FUSION_SHAPE))
    ddp = DistributedDataParallel(net, DDPConfig(bucket_size=3000, gradient_accumulation_fusion="on", **cfg), ctx)
    data = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(5 + ctx.rank))
    ddp.zero_grad_buffer()
    ddp(data[:, :-1], targets=data[:, 1:]).loss.backward()
    ddp.finish_grad_sync()
    return torch.cat([b.grad_data for b in ddp.buffers])


def _through_the_ddp(ctx) -> dict:
    out = {}
    ref, _ = _tiny_grads(ctx)
    warm, metrics = _tiny_grads(ctx, comm_hook="powersgd", powersgd_start_iter=1)
    out["warm_up_equal"], out["warm_up_ratio"] = torch.equal(warm, ref), metrics["comm_compression_ratio"]
    cases = {
        "overlap": ({}, {}),
        "no_overlap": ({"overlap_grad_reduce": False}, {"overlap_grad_reduce": False}),
        "accumulation": ({"micro": 3}, {"micro": 3}),
        "tensor_scale": ({"scale": torch.tensor(0.25)}, {"scale": torch.tensor(0.25)}),
        "bf16_params_fp32_grads": ({"dtype": torch.bfloat16}, {"dtype": torch.bfloat16}),
        "bf16_grads": ({"dtype": torch.bfloat16, "grad_reduce_in_fp32": False},
                       {"dtype": torch.bfloat16, "grad_reduce_in_fp32": False}),
    }
    for name, (ref_kw, kw) in cases.items():
        ref, _ = _tiny_grads(ctx, **ref_kw)
        got, metrics = _tiny_grads(ctx, **kw, **FULL_RANK)
        out[name] = ((got - ref).abs().max() / ref.abs().max()).item(), metrics["comm_compression_ratio"]
    ref = _fused_grads(ctx)
    out["fusion"] = ((_fused_grads(ctx, **FULL_RANK) - ref).abs().max() / ref.abs().max()).item()
    return out


def _optim_run(ctx, zero: bool, steps: int, clip: float = 0.05, overlap_step: bool = False, resume_at: int = -1):
    """The toy (bf16 params) trained with PowerSGD rank 2; per step this rank's shard of the reduced grads, the
    norm of the whole reduced grads and the optimizer's grad norm; the final params. With resume_at, every
    object is rebuilt at that step from checkpointed state (hook state per rank through torch.save)."""
    ocfg = OptimizerConfig(learning_rate=2e-2, min_lr=2e-3, warmup_iters=0, lr_decay_iters=20, weight_decay=0.5,
                           grad_clip=clip, overlap_optim_step=overlap_step)
    dcfg = DDPConfig(bucket_size=100, comm_hook="powersgd", use_distributed_optimizer=zero, powersgd_rank=2,
                     powersgd_start_iter=1)

    def build():
        model = make_model(torch.bfloat16)
        ddp = DistributedDataParallel(model, dcfg, ctx)
        opt = build_optimizer(ocfg, ddp, torch.bfloat16, ctx)
        ddp.register_post_reduce(opt.post_reduce_callback)
        return model, ddp, opt

    model, ddp, opt = build()
    shards, full_norms, opt_norms = [], [], []
    for it in range(steps):
        if it == resume_at:
            model, ddp, opt = _rebuilt(ctx, (model, ddp, opt), build)
        opt.set_lr(1e-2)
        ddp.zero_grad_buffer()
        x, y = batch(it, torch.bfloat16)
        rows = x.shape[0] // ctx.world_size
        sl = slice(ctx.rank * rows, (ctx.rank + 1) * rows)
        loss_fn(ddp, x[sl], y[sl]).backward()
        ddp.finish_grad_sync()
        shards.append(torch.cat([b.grad_data[slice(*b.shard_range())] for b in ddp.buckets]).clone())
        full_norms.append(torch.linalg.vector_norm(torch.cat([b.grad_data for b in ddp.buckets])).item())
        opt_norms.append(float(opt.step()[1]))
    ddp.finish_param_sync()
    return {"shards": shards, "full_norms": full_norms, "opt_norms": opt_norms,
            "params": {n: p.detach().float().clone() for n, p in model.named_parameters()},
            "hook_state": type(ddp.comm_hook.state).__name__,
            "metrics": ddp.comm_hook.state.metrics()}


def _rebuilt(ctx, old, build):
    """What a resume does: new model, DDP and optimizer from the old ones' saved state."""
    model, ddp, opt = old
    weights = {n: t.clone() for n, t in model.state_dict().items()}
    everyone = [None] * ctx.world_size
    dist.all_gather_object(everyone, opt.state_dict(), group=ctx.group)
    blob = io.BytesIO()
    torch.save(ddp.comm_hook.state.state_dict(), blob)  # one file per rank: the errors are this rank's
    blob.seek(0)
    model, ddp, _ = new = build()
    model.load_state_dict(weights)
    new[2].reload_model_params()
    new[2].load_state_dict(everyone)
    ddp.comm_hook.state.load_state_dict(torch.load(blob, weights_only=True))
    return new


def _with_the_optimizer(ctx) -> dict:
    steps = 6
    plain = _optim_run(ctx, zero=False, steps=steps)
    return {"plain": plain, "zero": _optim_run(ctx, zero=True, steps=steps),
            "resumed": _optim_run(ctx, zero=False, steps=steps, resume_at=3),
            "zero_resumed": _optim_run(ctx, zero=True, steps=steps, resume_at=3),
            "no_clip": _optim_run(ctx, zero=True, steps=steps, clip=0.0),
            "overlap_step": _optim_run(ctx, zero=True, steps=steps, clip=0.0, overlap_step=True)}


def _to_numpy(x):
    """Tensors (nested in dicts, lists, tuples) as numpy arrays: a child's shared-memory tensors die with it."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().numpy().copy()
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_numpy(v) for v in x)
    return x


def _worker(ctx):
    return _to_numpy({"ddp": _through_the_ddp(ctx), "optim": _with_the_optimizer(ctx)})


@pytest.fixture(scope="module")
def results():
    return run_dist(_worker, 2, timeout_s=240)


def test_warm_up_through_the_ddp_is_bitwise_allreduce(results):
    for r in results:
        assert r["ddp"]["warm_up_equal"] and r["ddp"]["warm_up_ratio"] == 1.0


@pytest.mark.parametrize("case, tol", [("overlap", 1e-5), ("no_overlap", 1e-5), ("accumulation", 1e-5),
                                       ("tensor_scale", 1e-5), ("bf16_params_fp32_grads", 1e-5),
                                       ("bf16_grads", 2e-2)])
def test_full_rank_powersgd_is_allreduce(results, case, tol):
    for r in results:
        err, ratio = r["ddp"][case]
        assert err < tol and ratio != 1.0, (case, err, ratio)


def test_full_rank_powersgd_with_gradient_accumulation_fusion(results):
    for r in results:
        assert r["ddp"]["fusion"] < 5e-5


def test_zero1_shards_are_the_shards_of_the_full_result(results):
    for r in results:
        plain, zero = r["optim"]["plain"], r["optim"]["zero"]
        np.testing.assert_array_equal(plain["shards"][0], zero["shards"][0])  # the same inputs: the same bits
        for a, b in zip(plain["shards"], zero["shards"]):  # later steps: the two optimizers round differently
            np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)
        for n, p in plain["params"].items():
            np.testing.assert_allclose(zero["params"][n], p, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("run", ["plain", "zero", "no_clip"])
def test_grad_norm_and_clipping_see_the_decompressed_grads(results, run):
    for r in results:
        res = r["optim"][run]
        assert res["hook_state"] == "PowerSGDState" and res["metrics"]["comm_compression_ratio"] < 1.0
        # the norm the optimizer clips by (recorded per bucket during the backward) is the decompressed grads'
        np.testing.assert_allclose(res["opt_norms"], res["full_norms"], rtol=1e-5)


def test_overlap_optim_step_with_powersgd(results):
    for r in results:
        a, b = r["optim"]["no_clip"], r["optim"]["overlap_step"]
        for n, p in a["params"].items():
            np.testing.assert_array_equal(b["params"][n], p, err_msg=n)


@pytest.mark.parametrize("zero", [False, True])
def test_resume_is_bitwise_the_straight_run(results, zero):
    for r in results:
        straight, resumed = r["optim"]["zero" if zero else "plain"], r["optim"]["zero_resumed" if zero else "resumed"]
        for a, b in zip(straight["shards"], resumed["shards"]):
            np.testing.assert_array_equal(b, a)
        for n, p in straight["params"].items():
            np.testing.assert_array_equal(resumed["params"][n], p, err_msg=n)
