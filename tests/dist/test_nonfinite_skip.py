"""--skip_nonfinite: a non-finite loss on one rank skips the step on every rank together (bf16/fp32, DDP and
ZeRO-1): params and Adam state stay as they were, and the next finite step trains normally. The inf enters in
the backward, as a real one does, so the per-bucket grad norms taken during the reduction see it."""
import numpy as np
import pytest
import torch

from optimizer import get_lr
from tests.support import toy
from tests.support.launch import run_dist


def _step(ctx, model, ddp, opt, ocfg, it: int, poison: bool) -> bool:
    opt.set_lr(get_lr(it, ocfg, 20))
    ddp.zero_grad_buffer()
    x, y = toy.batch(it, torch.float32)
    rows = toy.BATCH // ctx.world_size
    sl = slice(ctx.rank * rows, (ctx.rank + 1) * rows)
    loss = toy.loss_fn(ddp, x[sl], y[sl])
    if poison and ctx.rank == 1:
        loss = loss * float("inf")
    loss.backward()
    ddp.finish_grad_sync()
    stepped, _ = opt.step()
    ddp.finish_param_sync()
    return stepped


def _run(ctx, zero: bool):
    case = toy.Case(dtype=torch.float32, zero=zero)
    model, ddp, opt, ocfg = toy.setup(ctx, case)
    stepped = [_step(ctx, model, ddp, opt, ocfg, it, False) for it in range(2)]
    before, state_before = toy.params_of(model), toy.to_numpy(opt.state_dict())
    stepped.append(_step(ctx, model, ddp, opt, ocfg, 2, True))
    unchanged = all(np.array_equal(before[k], v) for k, v in toy.params_of(model).items())
    state_after = toy.to_numpy(opt.state_dict())
    same_state = state_before is None or all(
        np.array_equal(state_before["params"][n][f], state_after["params"][n][f])
        for n in state_before["params"] for f in ("main", "exp_avg", "exp_avg_sq"))
    stepped.append(_step(ctx, model, ddp, opt, ocfg, 3, False))
    moved = any(not np.array_equal(before[k], v) for k, v in toy.params_of(model).items())
    finite = all(np.isfinite(v).all() for v in toy.params_of(model).values())
    return {"stepped": stepped, "unchanged": unchanged, "same_state": same_state, "moved": moved, "finite": finite}


@pytest.mark.parametrize("zero", [False, True])
def test_a_nonfinite_loss_on_one_rank_skips_the_step_everywhere(zero):
    for r in run_dist(_run, 2, zero):
        assert r["stepped"] == [True, True, False, True], r
        assert r["unchanged"] and r["same_state"] and r["moved"] and r["finite"], r
