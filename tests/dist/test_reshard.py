"""Resharding ZeRO-1 optimizer state on resume: saved on 2 ranks -> loaded on 3, saved on 3 -> loaded on 1.

Timeline (global batch fixed per step; "parts" is how many ranks/micro-batches split it):
  A: 2 ranks, ZeRO-1, steps 0..10                        -> checkpoint A (model params + 2 optim dicts)
  B: 3 ranks, ZeRO-1, load A, steps 10..15 -> checkpoint B (3 optim dicts), then steps 15..20
  C: 1 process (no ZeRO), load B, steps 15..20 as 3 micro-batches (the same global batch)
  R: 1 process reference without any checkpoint: steps 0..10 as 2 parts, 10..20 as 3 parts.
Right after a load, the reassembled state must equal the saved state bitwise; at step 20 B and C must
equal R within fp32 reduction-order tolerance.
"""
import numpy as np
import pytest
import torch

from tests.support.launch import run_dist
from tests.support.toy import (Case, load_params, merge_main, params_of, setup, single_ctx, to_numpy, to_torch,
                               train_steps, with_optim)

CASE = with_optim(Case(dtype=torch.bfloat16, zero=True), grad_clip=0.05)


def _phase_a(ctx):
    model, ddp, opt, ocfg = setup(ctx, CASE)
    train_steps(ctx, CASE, model, ddp, opt, ocfg, 0, 10, parts=ctx.world_size)
    return {"params": params_of(model), "state": to_numpy(opt.state_dict())}


def _resume(ctx, ckpt, use_zero):
    model, ddp, opt, ocfg = setup(ctx, CASE, use_zero=use_zero)
    load_params(model, ckpt["params"])
    opt.load_state_dict([to_torch(s) for s in ckpt["states"]])
    return model, ddp, opt, ocfg


def _phase_b(ctx, ckpt_a):
    model, ddp, opt, ocfg = _resume(ctx, ckpt_a, use_zero=True)
    out = {"after_load": to_numpy(opt.state_dict())}
    train_steps(ctx, CASE, model, ddp, opt, ocfg, 10, 15, parts=ctx.world_size)
    out.update(params15=params_of(model), state15=to_numpy(opt.state_dict()))
    train_steps(ctx, CASE, model, ddp, opt, ocfg, 15, 20, parts=ctx.world_size)
    out.update(params20=params_of(model), state20=to_numpy(opt.state_dict()))
    return out


def _reference():
    model, ddp, opt, ocfg = setup(single_ctx(), CASE, use_zero=False)
    train_steps(single_ctx(), CASE, model, ddp, opt, ocfg, 0, 10, parts=2)
    train_steps(single_ctx(), CASE, model, ddp, opt, ocfg, 10, 20, parts=3)
    return {"params": params_of(model), "state": to_numpy(opt.state_dict())}


def _assert_states_equal(got_sds, want_sds):
    got, want = merge_main(got_sds), merge_main(want_sds)
    assert got.keys() == want.keys()
    for n in want:
        for k in want[n]:
            np.testing.assert_array_equal(got[n][k], want[n][k], err_msg=f"{n}.{k}")
    steps = {p["step"] for sd in got_sds if sd for p in sd["params"].values()}
    assert steps == {p["step"] for sd in want_sds if sd for p in sd["params"].values()}


def _assert_close(got_sds, got_params, ref):
    got, want = merge_main(got_sds), merge_main([ref["state"]])
    for n in want:
        for k in want[n]:
            np.testing.assert_allclose(got[n][k], want[n][k], rtol=1e-5, atol=1e-6, err_msg=f"{n}.{k}")
        np.testing.assert_allclose(got_params[n], ref["params"][n], rtol=8e-3, atol=1e-6, err_msg=n)


@pytest.fixture(scope="module")
def timeline():
    a = run_dist(_phase_a, 2, timeout_s=120)
    ckpt_a = {"params": a[0]["params"], "states": [r["state"] for r in a]}
    b = run_dist(_phase_b, 3, ckpt_a, timeout_s=120)
    ckpt_b = {"params": b[0]["params15"], "states": [r["state15"] for r in b]}
    model, ddp, opt, ocfg = _resume(single_ctx(), ckpt_b, use_zero=False)
    c_after_load = to_numpy(opt.state_dict())
    train_steps(single_ctx(), CASE, model, ddp, opt, ocfg, 15, 20, parts=3)  # GA 3: same global batch
    c = {"after_load": c_after_load, "params20": params_of(model), "state20": to_numpy(opt.state_dict())}
    return {"ckpt_a": ckpt_a, "b": b, "ckpt_b": ckpt_b, "c": c, "ref": _reference()}


def test_2_to_3_reassembles_exactly(timeline):
    b = timeline["b"]
    held = sum(p["end"] - p["start"] for r in b for p in r["after_load"]["params"].values())
    assert held == sum(v.size for v in timeline["ckpt_a"]["params"].values())  # each element on exactly one rank
    _assert_states_equal([r["after_load"] for r in b], timeline["ckpt_a"]["states"])


def test_2_to_3_then_trains_like_the_reference(timeline):
    b = timeline["b"]
    for r in b[1:]:
        for n, v in b[0]["params20"].items():
            np.testing.assert_array_equal(r["params20"][n], v, err_msg=n)
    _assert_close([r["state20"] for r in b], b[0]["params20"], timeline["ref"])


def test_3_to_1_reassembles_exactly_and_trains_like_the_reference(timeline):
    c = timeline["c"]
    _assert_states_equal([c["after_load"]], timeline["ckpt_b"]["states"])
    _assert_close([c["state20"]], c["params20"], timeline["ref"])
