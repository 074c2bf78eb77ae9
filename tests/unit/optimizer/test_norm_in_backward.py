"""The grad norm taken per bucket during the backward (bf16/fp32 without loss scaling) equals the one step()
used to compute from all grads at once, bit for bit, and the fallback covers steps without a DDP sync."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from optimizer.clip import squared_norm, tensor_norms
from tests.support.toy import Case, batch, loss_fn, run_case, setup, single_ctx, with_optim


def _backward(ddp, opt, it: int, dtype) -> list[torch.Tensor]:
    ddp.zero_grad_buffer()
    x, y = batch(it, dtype)
    loss_fn(ddp, x, y).backward()
    ddp.finish_grad_sync()
    return [g for r in opt.regions for g in r.grad_views()]


def test_tensor_norms_split_anywhere_sum_like_squared_norm():
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(n, generator=g) * s for n, s in ((5, 1.0), (1000, 1e-3), (1, 30.0), (77, 0.5))]
    whole = squared_norm(ts, torch.device("cpu"))
    for cut in range(len(ts) + 1):
        parts = torch.cat([tensor_norms(ts[:cut], torch.device("cpu")), tensor_norms(ts[cut:], torch.device("cpu"))])
        assert torch.equal(parts.square().sum(), whole)
    assert tensor_norms([], torch.device("cpu")).shape == (0,)


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap", "launch_at_finish"])
@pytest.mark.parametrize("dtype,fp32_grads", [(torch.bfloat16, True), (torch.bfloat16, False), (torch.float32, True)])
def test_recorded_norm_is_the_norm_of_all_grads(dtype, fp32_grads, overlap):
    case = with_optim(Case(dtype=dtype, grad_reduce_in_fp32=fp32_grads, overlap_grad_reduce=overlap), grad_clip=0.05)
    _, ddp, opt, _ = setup(single_ctx(), case)
    grads = _backward(ddp, opt, 0, dtype)
    assert len(opt._bucket_norms) == len(opt.regions) > 1  # one record per bucket, from the comm hook
    want = squared_norm(grads, torch.device("cpu"))
    assert torch.equal(opt._squared_norm(grads), want)
    assert opt._bucket_norms == {}  # consumed: a later step without a sync cannot reuse them


def test_without_a_sync_the_norm_is_computed_in_step():
    """Grads written by hand after a consumed step: step() sees them (no stale records)."""
    case = with_optim(Case(dtype=torch.bfloat16), grad_clip=0.05)
    _, ddp, opt, _ = setup(single_ctx(), case)
    _backward(ddp, opt, 0, torch.bfloat16)
    opt.step()
    for buf in ddp.buffers:
        buf.grad_data.fill_(0.5)
    grads = [g for r in opt.regions for g in r.grad_views()]
    want = squared_norm(grads, torch.device("cpu")).sqrt()  # before the step clips the fp32 grads in place
    _, norm = opt.step()
    assert torch.equal(norm, want) and want > 1.0


def test_fp16_keeps_its_norm_in_step():
    case = with_optim(Case(dtype=torch.float16), grad_clip=0.05, initial_loss_scale=1024.0)
    _, ddp, opt, _ = setup(single_ctx(), case)
    _backward(ddp, opt, 0, torch.float16)
    assert opt._bucket_norms == {}


def test_training_matches_computing_the_norm_in_step(monkeypatch):
    """10 clipped steps with the recorded norms against the same steps with the records ignored: bitwise."""
    case = with_optim(Case(dtype=torch.bfloat16), grad_clip=0.05)
    a = run_case(single_ctx(), case, parts=2, steps=10)
    from optimizer.mixed_precision import MixedPrecisionOptimizer

    monkeypatch.setattr(MixedPrecisionOptimizer, "record_bucket_norms", lambda self, bucket: None)
    b = run_case(single_ctx(), replace(case), parts=2, steps=10)
    assert [r["norm"] for r in a["log"]] == [r["norm"] for r in b["log"]]
    for n, want in b["params"].items():
        np.testing.assert_array_equal(a["params"][n], want, err_msg=n)
