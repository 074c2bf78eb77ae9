"""MixedPrecisionOptimizer (fp32, bf16, fp16 params) against a hand-written fp32-master AdamW, bitwise, on one process.

Plus the combinations build_optimizer must reject, and overlap_optim_step on one process.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

import configurator
from optimizer import MixedPrecisionOptimizer, build_optimizer, get_lr
from optimizer.grad_scaler import DynamicGradScaler
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from tests.support.toy import Case, batch, loss_fn, make_model, run_case, single_ctx, with_optim

STEPS = 20


def reference_run(case: Case, steps: int = STEPS) -> dict[str, np.ndarray]:
    """Plain loop: model params in case.dtype, fp32 master copies, AdamW written out by hand.

    Mirrors the documented algorithm: grads in fp32; fp16: unscale by 1/S, skip on inf; global norm
    as sqrt(sum of per-param norms²) in buffer order (reverse registration); clip coefficient
    min(1, c/(norm+1e-6)); decoupled weight decay for ndim >= 2 only; then Adam with bias correction.
    """
    cfg = case.optimizer_config()
    model = make_model(case.dtype)
    named = list(model.named_parameters())
    master = {n: p.detach().float().clone() for n, p in named}
    m = {n: torch.zeros_like(v) for n, v in master.items()}
    v = {n: torch.zeros_like(t) for n, t in master.items()}
    scaler = (DynamicGradScaler(cfg.initial_loss_scale, cfg.min_loss_scale, cfg.loss_scale_window, cfg.hysteresis)
              if case.dtype == torch.float16 else None)
    adam_step = 0
    for it in range(steps):
        lr = get_lr(it, cfg, 20)
        for _, p in named:
            p.grad = None
        x, y = batch(it, case.dtype)
        loss = loss_fn(model, x, y)
        (loss * scaler.scale if scaler else loss).backward()
        grads = {n: p.grad.float() for n, p in named}
        if scaler:
            for g in grads.values():
                g.mul_(scaler.inv_scale)
            if not all(torch.isfinite(g).all() for g in grads.values()):
                scaler.update(True)
                continue
            scaler.update(False)
        if cfg.grad_clip > 0:
            norms = [torch.linalg.vector_norm(grads[n]) for n, _ in reversed(named)]
            total = torch.stack(norms).square().sum().sqrt()
            coef = (cfg.grad_clip / (total + 1e-6)).clamp(max=1.0)
            for g in grads.values():
                g.mul_(coef)
        adam_step += 1
        bc1, bc2 = 1 - cfg.beta1 ** adam_step, 1 - cfg.beta2 ** adam_step
        for n, p in named:
            w, g = master[n], grads[n]
            if p.ndim >= 2:
                w.mul_(1 - lr * cfg.weight_decay)
            m[n].lerp_(g, 1 - cfg.beta1)
            v[n].mul_(cfg.beta2).addcmul_(g, g, value=1 - cfg.beta2)
            denom = (v[n].sqrt() / bc2 ** 0.5).add_(cfg.adam_eps)
            w.addcdiv_(m[n], denom, value=(lr / bc1) * -1)
            with torch.no_grad():
                p.copy_(w)
    return {n: t.numpy() for n, t in master.items()}, {n: p.detach().float().numpy() for n, p in named}


def _assert_bitwise(got: dict, want: dict):
    assert got.keys() == want.keys()
    for n in want:
        np.testing.assert_array_equal(got[n], want[n], err_msg=n)


@pytest.mark.parametrize("case", [
    Case(dtype=torch.bfloat16, optim={"grad_clip": 0.05}),
    Case(dtype=torch.bfloat16, bucket_size=10_000, grad_reduce_in_fp32=False),
    Case(dtype=torch.float32, optim={"grad_clip": 0.05}),
    Case(dtype=torch.float16, optim={"grad_clip": 0.05, "loss_scale_window": 4, "initial_loss_scale": 2.0 ** 14}),
], ids=["bf16_clip", "bf16_bf16grads_onebucket", "fp32_clip", "fp16_dynamic"])
def test_matches_handwritten_fp32_master_reference(case):
    out = run_case(single_ctx(), case, parts=1, steps=STEPS)
    want_master, want_params = reference_run(case)
    got_master = {n: np.asarray(piece["main"]).reshape(piece["shape"]) for n, piece in out["state"]["params"].items()}
    _assert_bitwise(got_master, want_master)
    _assert_bitwise(out["params"], want_params)
    assert all(r["stepped"] for r in out["log"])
    if case.optim.get("grad_clip"):
        assert min(r["norm"] for r in out["log"]) > 0.05  # clipping really was active
    if case.dtype == torch.float16:
        assert out["log"][-1]["scale"] > 2.0 ** 14  # the dynamic scale grew on clean steps


def test_class_choice_and_state_dict_roles():
    for dtype in (torch.float32, torch.bfloat16):
        model = make_model(dtype)
        ddp = DistributedDataParallel(model, DDPConfig(bucket_size=100), single_ctx())
        opt = build_optimizer(Case().optimizer_config(), ddp, dtype, single_ctx())
        assert type(opt) is MixedPrecisionOptimizer and opt.loss_scale == 1.0
        sd = opt.state_dict()
        assert set(sd["params"]) == {n for n, _ in model.named_parameters()}
        assert sd["grad_scaler"] is None


@pytest.mark.parametrize("argv,match", [
    (["--overlap_optim_step", "--grad_clip=1"], "grad_clip=0"),
    (["--overlap_optim_step", "--grad_clip=0", "--dtype=float16"], "overlap_optim_step"),
    (["--overlap_param_gather"], "use_distributed_optimizer"),
    (["--loss_scale=128", "--dtype=bfloat16"], "loss_scale"),
])
def test_rejects_bad_combinations(argv, match):
    """The optimizer's cross-flag rules have one home, the configurator (the optimizer asserts them)."""
    with pytest.raises(ValueError, match=match):
        configurator.build_config(argv)


def test_overlap_optim_step_single_process_bitwise():
    base = Case(dtype=torch.bfloat16)
    a = run_case(single_ctx(), base, parts=1, steps=8)
    b = run_case(single_ctx(), with_optim(base, overlap_optim_step=True), parts=1, steps=8)
    _assert_bitwise(b["params"], a["params"])
    np.testing.assert_allclose([r["norm"] for r in b["log"]], [r["norm"] for r in a["log"]], rtol=1e-6)


def test_load_state_dict_roundtrip_single_process():
    case = replace(Case(dtype=torch.bfloat16), optim={"grad_clip": 0.05})
    out = run_case(single_ctx(), case, parts=1, steps=5)
    model = make_model(case.dtype)
    ddp = DistributedDataParallel(model, DDPConfig(bucket_size=37), single_ctx())
    opt = build_optimizer(case.optimizer_config(), ddp, case.dtype, single_ctx())
    from tests.support.toy import to_numpy, to_torch

    opt.load_state_dict([to_torch(out["state"])])
    again = to_numpy(opt.state_dict())
    for n, piece in out["state"]["params"].items():
        for k in ("main", "exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(again["params"][n][k], piece[k], err_msg=f"{n}.{k}")
        assert again["params"][n]["step"] == piece["step"] == 5
    np.testing.assert_array_equal(model.blocks[0].weight.detach().float().numpy(), out["params"]["blocks.0.weight"])
    with pytest.raises(ValueError, match="covers"):
        broken = to_torch(out["state"])
        broken["params"]["blocks.0.weight"]["end"] -= 1
        broken["params"]["blocks.0.weight"]["main"] = broken["params"]["blocks.0.weight"]["main"][:-1]
        opt.load_state_dict([broken])


def test_fp16_scaler_state_and_reload_model_params():
    case = Case(dtype=torch.float16, optim={"loss_scale_window": 2, "initial_loss_scale": 256.0})
    out = run_case(single_ctx(), case, parts=1, steps=5)
    assert out["state"]["grad_scaler"]["scale"] == out["log"][-1]["scale"] == 1024.0
    model = make_model(case.dtype)
    ddp = DistributedDataParallel(model, DDPConfig(bucket_size=100), single_ctx())
    opt = build_optimizer(case.optimizer_config(), ddp, case.dtype, single_ctx())
    from tests.support.toy import to_torch

    opt.load_state_dict([to_torch(out["state"])])
    assert opt.loss_scale == 1024.0 and opt.iteration == 5
    with torch.no_grad():
        model.blocks[0].weight.fill_(0.5)
    opt.reload_model_params()
    assert (opt.state_dict()["params"]["blocks.0.weight"]["main"] == 0.5).all()
