"""ZeRO-1 on 2 and 3 gloo ranks against the single-process MixedPrecisionOptimizer, and the overlaps.

One process group per world size runs every case (process start-up dominates the cost). The toy
model's buckets (bucket_size 100) mix 1-D and 2-D params, a shard boundary cuts a weight, and on 2
ranks one rank's shard of a bucket is all padding. The fused AdamW kernel on the ranks' shards runs in the
Triton interpreter child (tests/triton_interp.py).
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.support.launch import run_dist
from tests.support.toy import Case, merge_main, run_case, single_ctx, with_optim
from tests.triton_interp import interp, run_file_in_interpreter

STEPS = 20
BF16 = Case(dtype=torch.bfloat16, zero=True)
CLIP = {"grad_clip": 0.05}  # below the toy's grad norms: clipping is active on every step


def _cases(world: int) -> dict[str, Case]:
    cases = {
        "bf16_clip": with_optim(BF16, **CLIP),
        "bf16_clip_overlap_gather": with_optim(BF16, overlap_param_gather=True, **CLIP),
        "bf16_noclip": BF16,
        "bf16_overlap_optim_step": with_optim(BF16, overlap_optim_step=True),
        "fp32_clip": with_optim(replace(BF16, dtype=torch.float32), **CLIP),
    }
    if world == 2:
        cases.update({
            "bf16_bf16grads": replace(BF16, grad_reduce_in_fp32=False),
            "bf16_no_overlap_grad_reduce": replace(with_optim(BF16, **CLIP), overlap_grad_reduce=False),
            "ddp_noclip": replace(BF16, zero=False),
            "ddp_overlap_optim_step": with_optim(replace(BF16, zero=False), overlap_optim_step=True),
            "fp16_inf": _fp16_inf(zero=True),
            "ddp_fp16_inf": _fp16_inf(zero=False),
        })
    return cases


def _fp16_inf(zero: bool) -> Case:
    return with_optim(replace(BF16, dtype=torch.float16, zero=zero, inject_inf_at=5),
                      hysteresis=1, loss_scale_window=1000, initial_loss_scale=1024.0, **CLIP)


def _worker(ctx, names_and_cases):
    return {name: run_case(ctx, case, parts=ctx.world_size, steps=STEPS) for name, case in names_and_cases}


@pytest.fixture(scope="module")
def results():
    out = {}
    for world in (2, 3):
        cases = _cases(world)
        per_rank = run_dist(_worker, world, list(cases.items()), timeout_s=180)
        out[world] = (cases, per_rank)
    return out


def _master(res_per_rank, name):
    return merge_main([r[name]["state"] for r in res_per_rank])


def _reference(case: Case, world: int) -> dict:
    return run_case(single_ctx(), replace(case, zero=False), parts=world, steps=STEPS)


def _assert_same_params_on_all_ranks(per_rank, name):
    for r in per_rank[1:]:
        for n, v in per_rank[0][name]["params"].items():
            np.testing.assert_array_equal(r[name]["params"][n], v, err_msg=f"{name}: {n} differs between ranks")


def _params(names):
    """(world, name) pairs for the cases that world runs (some run on 2 ranks only, to keep the suite fast)."""
    return [(w, n) for w in (2, 3) for n in names if n in _cases(w)]


@pytest.mark.parametrize("world,name", _params(["bf16_clip", "bf16_noclip", "fp32_clip", "bf16_bf16grads",
                                                "bf16_no_overlap_grad_reduce", "ddp_noclip"]))
def test_matches_single_process(results, world, name):
    cases, per_rank = results[world]
    _assert_same_params_on_all_ranks(per_rank, name)
    ref = _reference(cases[name], world)
    got, want = _master(per_rank, name), merge_main([ref["state"]])
    for n in want:
        for k in ("main", "exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(got[n][k], want[n][k], rtol=1e-5, atol=1e-6, err_msg=f"{name}: {n}.{k}")
    for n, v in ref["params"].items():  # bf16 model params: at most one rounding flip (2^-8 relative) apart
        np.testing.assert_allclose(per_rank[0][name]["params"][n], v, rtol=8e-3, atol=1e-6, err_msg=f"{name}: {n}")
    np.testing.assert_allclose([r["norm"] for r in per_rank[0][name]["log"]], [r["norm"] for r in ref["log"]],
                               rtol=1e-5)


BASE = {"bf16_clip_overlap_gather": "bf16_clip", "bf16_overlap_optim_step": "bf16_noclip",
        "ddp_overlap_optim_step": "ddp_noclip"}


@pytest.mark.parametrize("world,name", _params(list(BASE)))
def test_overlaps_equal_no_overlap(results, world, name):
    base = BASE[name]
    cases, per_rank = results[world]
    for r in per_rank:
        for n, v in r[base]["params"].items():
            np.testing.assert_array_equal(r[name]["params"][n], v, err_msg=f"{name} vs {base}: {n}")
        for n, piece in r[base]["state"]["params"].items() if r[base]["state"] else ():
            np.testing.assert_array_equal(r[name]["state"]["params"][n]["main"], piece["main"], err_msg=n)


@pytest.mark.parametrize("name", ["fp16_inf", "ddp_fp16_inf"])
def test_fp16_inf_on_one_rank_skips_everywhere(results, name):
    cases, per_rank = results[2]
    for rank, r in enumerate(per_rank):
        log = r[name]["log"]
        assert [e["stepped"] for e in log] == [i != 5 for i in range(STEPS)], f"rank {rank}"
        assert log[4]["scale"] == 1024.0 and log[5]["scale"] == 512.0, f"rank {rank}: scale not lowered"
        assert r[name]["state"] is None or all(p["step"] == STEPS - 1 for p in r[name]["state"]["params"].values())
    _assert_same_params_on_all_ranks(per_rank, name)


def test_kernels_in_interpreter():
    run_file_in_interpreter(__file__)


def _triton_worker(ctx, case):
    return run_case(ctx, case, parts=ctx.world_size, steps=5)


@interp
def test_interp_zero1_triton_matches_single_process_foreach():
    """ZeRO-1 on 2 gloo ranks with the kernel on each rank's shards (a shard boundary cuts a weight, one
    shard is all padding) against one process with the foreach path, within an ulp-level tolerance of each
    tensor's scale (the kernel's fp32 sqrt is correctly rounded, torch's CPU one not always)."""
    case = with_optim(Case(dtype=torch.bfloat16, zero=True), grad_clip=0.05, optimizer_impl="triton")
    per_rank = run_dist(_triton_worker, 2, case, timeout_s=120)
    ref = run_case(single_ctx(), with_optim(replace(case, zero=False), optimizer_impl="foreach"), parts=2, steps=5)
    got, want = merge_main([r["state"] for r in per_rank]), merge_main([ref["state"]])
    for n in want:
        for k in ("main", "exp_avg", "exp_avg_sq"):
            scale = float(np.abs(want[n][k]).max()) or 1.0
            np.testing.assert_allclose(got[n][k], want[n][k], rtol=0, atol=2e-6 * scale, err_msg=f"{n}.{k}")
    np.testing.assert_allclose([r["norm"] for r in per_rank[0]["log"]], [r["norm"] for r in ref["log"]], rtol=1e-5)
