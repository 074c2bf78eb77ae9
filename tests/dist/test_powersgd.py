"""PowerSGD's hook on 2 gloo ranks, bucket by bucket: exactness on low-rank grads, the warm-up, error feedback,
agreement with torch's powerSGD_hook, the checkpoint round trip, the fp16 overflow guard and the metrics.

One process group runs every case (process start-up dominates the cost); each case returns what it measured
and the tests assert on it, so a failure names its case.
"""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from parallel.comm_hooks.bucket import BucketParam, GradBucket
from parallel.comm_hooks.default import DefaultHookState, allreduce_hook
from parallel.comm_hooks.powersgd import STATE_FORMAT, PowerSGDState, make_plan, powersgd_hook
from tests.support.launch import run_dist

# two matrices of one shape (a batch), a 1-D param, a 3-D param (a 20×60 matrix), a skinny one (left uncompressed)
SHAPES = [(32, 24), (17,), (32, 24), (20, 30, 2), (64, 3)]


def make_bucket(ctx, shapes=SHAPES, index: int = 0, param_dtype=torch.float32, grad_dtype=torch.float32,
                pad: int = 5) -> GradBucket:
    params, offset = [], 0
    for k, shape in enumerate(shapes):
        n = math.prod(shape)
        params.append(BucketParam(f"b{index}.p{k}", nn.Parameter(torch.zeros(shape)), torch.Size(shape), offset,
                                  offset + n))
        offset += n
    numel = offset + pad
    return GradBucket(index, torch.zeros(numel, dtype=grad_dtype), torch.zeros(numel, dtype=param_dtype),
                      tuple(params), 1.0 / ctx.world_size, ctx.group, ctx.rank, ctx.world_size)


def fill_random(bucket: GradBucket, seed: int, mean: torch.Tensor | None = None) -> None:
    """Full-rank random grads (plus `mean` on the first param, a direction every step shares)."""
    g = torch.Generator().manual_seed(seed)
    for k, p in enumerate(bucket.params):
        v = torch.randn(p.shape, generator=g)
        if k == 0 and mean is not None:
            v += mean
        p.view(bucket.grad_data).copy_(v)


def allreduce_mean(bucket: GradBucket) -> torch.Tensor:
    ref = bucket.grad_data.clone()
    allreduce_hook(DefaultHookState(), bucket.with_grad(ref, bucket.grad_scale)).wait()
    return ref


def _exact_low_rank(ctx) -> dict:
    """Grads of rank <= r on every rank, summing to rank <= r: PowerSGD returns the mean (3 buckets in flight)."""
    state = PowerSGDState(rank=4, start_iter=0)
    buckets = [make_bucket(ctx, index=i) for i in range(3)]
    g = torch.Generator().manual_seed(0)
    bases = {(32, 24): 2, (20, 60): 3}  # matrix shape -> rank of the shared basis (2 < r and 3 < r)
    basis = {nm: (torch.randn(nm[0], k, generator=g), torch.randn(nm[1], k, generator=g)) for nm, k in bases.items()}
    worst = 0.0
    for step in range(4):
        refs = []
        for b in buckets:
            gen = torch.Generator().manual_seed(1000 * step + 10 * ctx.rank + b.index)
            for p in b.params:
                nm = (p.shape[0], p.shape.numel() // p.shape[0]) if len(p.shape) > 1 else None
                if nm in basis:
                    u, v = basis[nm]
                    value = (u * torch.randn(u.shape[1], generator=gen)) @ v.t()
                else:
                    value = torch.randn(p.shape, generator=gen)
                p.view(b.grad_data).copy_(value.view(p.shape))
            refs.append(allreduce_mean(b))
        futures = [powersgd_hook(state, b) for b in buckets]  # all in flight: the chain orders the collectives
        for f in futures:
            f.wait()
        for b, ref in zip(buckets, refs):
            for p in b.params:
                if p.shape != (64, 3):  # the skinny param is not low-rank, but is sent uncompressed: exact too
                    worst = max(worst, ((p.view(b.grad_data) - p.view(ref)).abs().max() / p.view(ref).abs().max())
                                .item())
    return {"worst_rel": worst, "metrics": state.metrics()}


def _warm_up(ctx) -> dict:
    """start_iter=3: steps 0–2 are bitwise the all-reduce result, step 3 is compressed."""
    state = PowerSGDState(rank=1, start_iter=3)
    bucket = make_bucket(ctx)
    equal = []
    for step in range(4):
        fill_random(bucket, 50 + 10 * step + ctx.rank)
        ref = allreduce_mean(bucket)
        powersgd_hook(state, bucket).wait()
        equal.append(torch.equal(bucket.grad_data, ref))
        ratio = state.metrics()["comm_compression_ratio"]
    return {"equal": equal, "last_ratio": ratio}


def _error_feedback(ctx, use_error_feedback: bool, steps: int = 50) -> dict:
    """Rank-4 compression of full-rank grads around a fixed full-rank mean: the running sums' gap over 50 steps."""
    state = PowerSGDState(rank=4, start_iter=0, use_error_feedback=use_error_feedback)
    bucket = make_bucket(ctx, [(32, 24), (20, 16), (7,)])
    plan = make_plan(bucket.params, 4, 2.0)
    mean = 3.0 * torch.randn(32, 24, generator=torch.Generator().manual_seed(7))
    true_sum = torch.zeros_like(bucket.grad_data)
    applied_sum = torch.zeros_like(bucket.grad_data)
    gaps, identity = [], 0.0
    for step in range(steps):
        fill_random(bucket, 500 + 10 * step + ctx.rank, mean)
        true_sum += allreduce_mean(bucket)
        powersgd_hook(state, bucket).wait()
        applied_sum += bucket.grad_data
        gap = true_sum - applied_sum
        gaps.append(gap.norm().item())
        if use_error_feedback:
            # the gap is exactly what the ranks' errors hold: the sum over ranks of e, at the params' places
            err = state._buckets[0].error.clone()
            dist.all_reduce(err, group=ctx.group)
            placed = torch.zeros_like(gap)
            offset = 0
            for p in plan.compressed:
                placed[p.start:p.end] = err[offset:offset + p.numel]
                offset += p.numel
            identity = max(identity, ((placed - gap).norm() / gap.norm().clamp_min(1e-12)).item())
    return {"gap_norm": gaps, "step_norm": mean.norm().item(),
            "identity": identity}


class _TorchBucket:
    """What torch's powerSGD_hook reads of a dist.GradBucket, over one of our buckets' flat grads."""

    def __init__(self, bucket: GradBucket):
        self._b = bucket

    def buffer(self):
        return self._b.grad_data

    def index(self):
        return self._b.index

    def gradients(self):
        return [p.view(self._b.grad_data) for p in self._b.params]

    def is_last(self):
        return True  # one bucket (the tiny models fit one): every call ends a step


def _torch_reference(ctx, rank: int, batched: bool, steps: int = 5) -> float:
    """Ours against torch's powerSGD_hook, from the same Q (torch's first random draw, replayed and loaded into
    our state) over `steps` warm-started steps with error feedback; returns the worst relative difference."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as ref

    seed = 3
    theirs = ref.PowerSGDState(process_group=ctx.group, matrix_approximation_rank=rank, start_powerSGD_iter=2,
                               min_compression_rate=2, use_error_feedback=True, warm_start=True, random_seed=seed,
                               batch_tensors_with_same_shape=batched)
    tb = make_bucket(ctx)
    for _ in range(2):  # torch's warm-up (it cannot start before iteration 2)
        fill_random(tb, 1)
        ref.powerSGD_hook(theirs, _TorchBucket(tb)).wait()
    ours = PowerSGDState(rank=rank, start_iter=0)
    ob = make_bucket(ctx)
    plan = make_plan(ob.params, rank, 2.0)
    # torch's first draw: one seed from its numpy RNG, then randn per batch of a shape (or per matrix)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(np.random.RandomState(seed).randint(1_000_000_000))
        shapes = [(len(g.params), g.m, g.r) for g in plan.groups] if batched else \
            [(1, g.m, g.r) for g in plan.groups for _ in g.params]
        q0 = torch.cat([torch.randn(*s).flatten() for s in shapes])
    ours.load_state_dict({"format": STATE_FORMAT, "settings": ours.settings(), "world_size": ctx.world_size,
                          "rank": ctx.rank, "buckets": {0: {"step": 0, "layout": plan.layout, "q": q0,
                                                            "error": None}}})
    worst = 0.0
    for step in range(steps):
        fill_random(tb, 900 + 10 * step + ctx.rank)
        fill_random(ob, 900 + 10 * step + ctx.rank)
        ref.powerSGD_hook(theirs, _TorchBucket(tb)).wait()
        powersgd_hook(ours, ob).wait()
        worst = max(worst, ((ob.grad_data - tb.grad_data).abs().max() / tb.grad_data.abs().max()).item())
    return worst


def _round_trip(ctx) -> dict:
    """state_dict -> torch.save -> torch.load(weights_only=True) -> load_state_dict continues bitwise."""
    def run(state, bucket, steps):
        out = []
        for step in steps:
            fill_random(bucket, 300 + 10 * step + ctx.rank)
            powersgd_hook(state, bucket).wait()
            out.append(bucket.grad_data.clone())
        return out

    settings = dict(rank=2, start_iter=1, warm_start=True, use_error_feedback=True, seed=11)
    straight = run(PowerSGDState(**settings), make_bucket(ctx), range(6))
    first = PowerSGDState(**settings)
    run(first, make_bucket(ctx), range(3))
    blob = io.BytesIO()
    torch.save(first.state_dict(), blob)
    blob.seek(0)
    saved = torch.load(blob, weights_only=True)
    resumed = PowerSGDState(**settings)
    resumed.load_state_dict(saved)
    again = run(resumed, make_bucket(ctx), range(3, 6))
    # the same checkpoint read as another rank's (or another world's): error restarts at zero, with a warning
    moved = PowerSGDState(**settings)
    other = {**saved, "world_size": 3}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        moved.load_state_dict(other)
        moved_out = run(moved, make_bucket(ctx), range(3, 6))
    no_error = PowerSGDState(**settings)
    no_error.load_state_dict({**saved, "buckets": {0: {**saved["buckets"][0], "error": None}}})
    return {"bitwise": all(torch.equal(a, b) for a, b in zip(straight[3:], again)),
            "saved_error": saved["buckets"][0]["error"] is not None, "format": saved["format"],
            "warned": [str(w.message) for w in caught],
            "moved_is_zero_error": all(torch.equal(a, b) for a, b in
                                       zip(moved_out, run(no_error, make_bucket(ctx), range(3, 6))))}


def _overflow_guard(ctx) -> dict:
    """fp16 params: an inf in one step's grads gives non-finite grads (the step is skipped), then clean steps."""
    state = PowerSGDState(rank=2, start_iter=0)
    bucket = make_bucket(ctx, param_dtype=torch.float16)
    finite = []
    for step in range(4):
        fill_random(bucket, 700 + 10 * step + ctx.rank)
        if step == 1 and ctx.rank == 1:
            bucket.grad_data[3] = float("inf")
        powersgd_hook(state, bucket).wait()
        finite.append(bool(torch.isfinite(bucket.grad_data).all()))
    bs = state._buckets[0]
    return {"finite": finite, "state_finite": bool(torch.isfinite(bs.error).all() and torch.isfinite(bs.q).all())}


def _worker(ctx) -> dict:
    return {
        "exact": _exact_low_rank(ctx),
        "warm_up": _warm_up(ctx),
        "ef": _error_feedback(ctx, True),
        "no_ef": _error_feedback(ctx, False),
        "torch": {f"r{r}{'_batched' if b else ''}": _torch_reference(ctx, r, b)
                  for r, b in ((1, False), (2, False), (4, False), (4, True))},
        "round_trip": _round_trip(ctx),
        "guard": _overflow_guard(ctx),
    }


@pytest.fixture(scope="module")
def results():
    return run_dist(_worker, 2, timeout_s=240)


def test_exact_for_grads_of_rank_at_most_r(results):
    for r in results:
        assert r["exact"]["worst_rel"] < 1e-5, r["exact"]


def test_compression_ratio_counts_p_q_and_the_uncompressed_grads(results):
    # per bucket: P 2·(32·4) + 20·4, Q 2·(24·4) + 60·4, U 17 + 64·3 elements, against 2945 + 5 padding
    sent = 2 * 32 * 4 + 20 * 4 + 2 * 24 * 4 + 60 * 4 + 17 + 64 * 3
    m = results[0]["exact"]["metrics"]
    assert m["comm_compression_ratio"] == pytest.approx(sent / 2950)
    assert m["comm_bytes_sent"] == 3 * 4 * sent


def test_warm_up_steps_are_exactly_allreduce(results):
    for r in results:
        assert r["warm_up"]["equal"] == [True, True, True, False]
        assert r["warm_up"]["last_ratio"] < 0.5


def test_error_feedback_keeps_the_running_sum_on_track(results):
    ef, no_ef = results[0]["ef"], results[0]["no_ef"]
    # the gap between the sums of true and applied grads is what the ranks' errors hold, to fp32 rounding
    assert ef["identity"] < 1e-4
    # bounded with error feedback: no growth over the last 25 steps, and a few steps' worth at most (measured:
    # a plateau at about 3.5 mean-gradient norms from step 10 on)
    assert max(ef["gap_norm"][25:]) < 1.25 * max(ef["gap_norm"][:25]), ef["gap_norm"]
    assert ef["gap_norm"][-1] < 5 * ef["step_norm"]
    # without it the mean's missed part piles up step after step (measured: 10x the gap with it at step 50)
    assert no_ef["gap_norm"][-1] > 5 * ef["gap_norm"][-1], (no_ef["gap_norm"][-1], ef["gap_norm"][-1])


@pytest.mark.parametrize("case", ["r1", "r2", "r4", "r4_batched"])
def test_agrees_with_torch_powersgd_hook(results, case):
    for r in results:
        assert r["torch"][case] < 1e-4, r["torch"]


def test_state_round_trip_continues_bitwise(results):
    for r in results:
        rt = r["round_trip"]
        assert rt["bitwise"] and rt["saved_error"] and rt["format"] == STATE_FORMAT
        assert rt["moved_is_zero_error"]
        assert any("error feedback restarts at zero" in w for w in rt["warned"]), rt["warned"]


def test_fp16_overflow_step_leaves_no_trace(results):
    for r in results:
        assert r["guard"]["finite"] == [True, False, True, True]
        assert r["guard"]["state_finite"]
