"""Two ranks on one GPU with gloo: our DDP's streams, events and futures with real asynchronous collectives.

NCCL refuses two ranks on one device, but gloo runs its collectives on CUDA tensors. So on a one-GPU machine
the comm stream, its wait_stream/event ordering, the futures of the hooks, the ZeRO-1 reduce-scatter and
all-gather and the overlaps run here against a real collective, and are checked against one process that
takes the same global batch as two micro-batches (the single-process reference of tests/support/toy.py).

Where gloo has no CUDA implementation of a collective, the cases that need it skip, naming the collective.
A profiler trace of the DDP step shows the bucket reductions issued before the backward has finished.
"""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (two gloo ranks share GPU 0)")

from parallel.dist import DistContext  # noqa: E402
from tests.support import toy  # noqa: E402
from tests.support.launch import run_dist  # noqa: E402

STEPS = 4
COLLECTIVES = ("all_reduce", "reduce_scatter", "all_gather", "broadcast")
CASES = {
    "ddp_allreduce": (toy.Case(dtype=torch.float32), ("all_reduce", "broadcast")),
    "ddp_bf16_params": (toy.Case(dtype=torch.bfloat16), ("all_reduce", "broadcast")),
    "ddp_no_overlap": (toy.Case(dtype=torch.float32, overlap_grad_reduce=False), ("all_reduce", "broadcast")),
    "zero1": (toy.Case(dtype=torch.float32, zero=True), ("reduce_scatter", "all_gather", "broadcast")),
    "zero1_overlap_gather": (toy.Case(dtype=torch.float32, zero=True, optim={"overlap_param_gather": True}),
                             ("reduce_scatter", "all_gather", "broadcast")),
    "zero1_overlap_step": (toy.Case(dtype=torch.float32, zero=True, optim={"overlap_optim_step": True}),
                           ("reduce_scatter", "all_gather", "broadcast")),
}


def _probe(ctx) -> dict[str, str | None]:
    """Each collective on CUDA tensors: None when it works, else the error gloo gives."""
    import torch.distributed as dist

    from parallel import collectives

    out = {}
    x = torch.arange(8, dtype=torch.float32, device=ctx.device) + ctx.rank
    tries = {
        "all_reduce": lambda: dist.all_reduce(x.clone(), group=ctx.group),
        "reduce_scatter": lambda: collectives.reduce_scatter(torch.empty(4, device=ctx.device), x.clone(), ctx.group),
        "all_gather": lambda: collectives.all_gather(torch.empty(16, device=ctx.device), x.clone(), ctx.group),
        "broadcast": lambda: dist.broadcast(x.clone(), src=0, group=ctx.group),
    }
    for name, call in tries.items():
        try:
            call()
            torch.cuda.synchronize()
            out[name] = None
        except (RuntimeError, ValueError, NotImplementedError) as e:
            out[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return out


@pytest.fixture(scope="module")
def missing() -> dict[str, str]:
    probe = run_dist(_probe, 2, timeout_s=120, device="cuda")[0]
    return {k: v for k, v in probe.items() if v is not None}


def _run(ctx, name: str, world_parts: int) -> dict:
    case = CASES[name][0]
    model, ddp, opt, ocfg = _setup(ctx, case)
    log = toy.train_steps(ctx, case, model, ddp, opt, ocfg, 0, STEPS, world_parts)
    return {"norms": [r["norm"] for r in log], "params": {n: p.detach().float().cpu().numpy()
                                                         for n, p in model.named_parameters()}}


def _setup(ctx, case):
    """toy.setup on the GPU: the model is moved to cuda:0 before the DDP wraps it."""
    from optimizer import build_optimizer
    from parallel.config import DDPConfig
    from parallel.ddp import DistributedDataParallel

    model = toy.make_model(case.dtype).to(ctx.device)
    dcfg = DDPConfig(bucket_size=case.bucket_size, grad_reduce_in_fp32=case.grad_reduce_in_fp32,
                     overlap_grad_reduce=case.overlap_grad_reduce, use_distributed_optimizer=case.zero,
                     comm_hook="reduce_scatter" if case.zero else "allreduce")
    ddp = DistributedDataParallel(model, dcfg, ctx)
    ddp.broadcast_params()
    ocfg = case.optimizer_config()
    opt = build_optimizer(ocfg, ddp, case.dtype, ctx)
    ddp.register_post_reduce(opt.post_reduce_callback)
    return model, ddp, opt, ocfg


def _single(name: str) -> dict:
    ctx = DistContext(0, 1, 0, torch.device("cuda", 0), None, None)
    return _run(ctx, name, 2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_gloo_ranks_on_one_gpu_match_one_process(name, missing):
    needs = [c for c in CASES[name][1] if c in missing]
    if needs:
        pytest.skip(f"gloo has no CUDA {', '.join(needs)} here ({missing[needs[0]]})")
    ranks = run_dist(_run, 2, name, 2, timeout_s=180, device="cuda")
    ref = _single(name)
    rtol = 2e-2 if CASES[name][0].dtype == torch.bfloat16 else 1e-5
    for r in ranks:
        np.testing.assert_allclose(r["norms"], ref["norms"], rtol=rtol)
        for k, v in ref["params"].items():
            np.testing.assert_allclose(r["params"][k], v, rtol=rtol, atol=rtol * 1e-2, err_msg=f"{name}: {k}")
    for k in ref["params"]:  # the ranks agree with each other exactly: same reduced grads, same update
        np.testing.assert_array_equal(ranks[0]["params"][k], ranks[1]["params"][k])


def _trace(ctx) -> dict:
    """One DDP step under the profiler: when was the first bucket's all-reduce issued, when did backward end."""
    from torch.profiler import ProfilerActivity, profile

    case = toy.Case(dtype=torch.float32, bucket_size=40)
    model, ddp, opt, ocfg = _setup(ctx, case)
    toy.train_steps(ctx, case, model, ddp, opt, ocfg, 0, 1, 2)  # warm-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        toy.train_steps(ctx, case, model, ddp, opt, ocfg, 1, 2, 2)
        torch.cuda.synchronize()
    events = prof.events()
    reduce_starts = sorted(e.time_range.start for e in events if "allreduce" in e.name.lower().replace("_", ""))
    backward = [e for e in events if "backward" in e.name.lower() and "autograd" in e.name.lower()]
    bwd_end = max((e.time_range.end for e in backward), default=None)
    return {"reduce_starts": reduce_starts, "backward_end": bwd_end, "buckets": len(ddp.buckets)}


def test_bucket_reductions_are_issued_during_the_backward(missing):
    if "all_reduce" in missing:
        pytest.skip(f"gloo has no CUDA all_reduce here ({missing['all_reduce']})")
    t = run_dist(_trace, 2, timeout_s=180, device="cuda")[0]
    assert t["buckets"] >= 2, t
    assert t["reduce_starts"] and t["backward_end"] is not None, t
    # overlap: the first bucket's reduction starts before the last backward op has run
    assert t["reduce_starts"][0] < t["backward_end"], t
