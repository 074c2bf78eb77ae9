"""optimizer/fused_adamw.py: the reference against torch.optim.AdamW, the Triton kernel (CPU interpreter) against
both, and the mixed-precision optimizer with --optimizer_impl=triton against the foreach path (on one process; the
kernel under ZeRO-1 on gloo ranks is tests/dist/test_zero1.py's).

Kernel tests (marked ``@interp``) run only in the TRITON_INTERPRET=1 child pytest of tests/triton_interp.py (see
there for why); ``test_kernels_in_interpreter`` starts it.
Tolerances: torch's CPU fp32 sqrt is not always correctly rounded while the kernel's is, so the two differ
by an ulp here and there; after a few steps that stays within ~1e-6 of the values' scale.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from optimizer import build_optimizer
from optimizer.fused_adamw import build_decay_plan, fused_adamw_step, join_main, split_main
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from tests.triton_interp import HAS_TRITON, IN_CHILD, interp, run_file_in_interpreter
from tests.support.toy import (Case, make_model, run_case, setup, single_ctx, to_numpy, to_torch, train_steps,
                               with_optim)

HP = dict(lr=3e-2, beta1=0.9, beta2=0.95, eps=1e-8)


def _problem(sizes: tuple[int, ...], seed: int = 0):
    """Params of the given sizes laid out flat with gaps of padding, 2-D ones decayed (every other one)."""
    g = torch.Generator().manual_seed(seed)
    segs, pos = [], 0
    for i, n in enumerate(sizes):
        segs.append((pos, pos + n, i % 2 == 0))
        pos += n + (3 if i % 3 == 1 else 0)  # padding between some params, as in buckets and shards
    numel = pos + 5
    main = torch.zeros(numel)
    for a, b, _ in segs:
        main[a:b] = torch.randn(b - a, generator=g)
    grads = [torch.zeros(numel) for _ in range(4)]
    for t in grads:
        for a, b, _ in segs:
            t[a:b] = torch.randn(b - a, generator=g) * 0.3
    return main, grads, segs


def _run_flat(impl: str, main, grads, segs, grad_dtype, wd: float, scale: float | None, out_dtype=None):
    plan = build_decay_plan(main.numel(), [(a, b) for a, b, d in segs if d], "cpu", block=256)
    p, m, v = main.clone(), torch.zeros_like(main), torch.zeros_like(main)
    out = None if out_dtype is None else torch.zeros(main.numel(), dtype=out_dtype)
    gs = None if scale is None else torch.tensor(scale, dtype=torch.float32)
    for step, g in enumerate(grads, start=1):
        fused_adamw_step(p, g.to(grad_dtype), m, v, out, weight_decay=wd, step=step, grad_scale=gs, decay=plan,
                         impl=impl, **HP)
    return p, m, v, out


def _run_torch_adamw(main, grads, segs, grad_dtype, wd: float, scale: float | None):
    """torch.optim.AdamW (foreach) on one tensor per param, decayed ones in their own group."""
    params = [torch.nn.Parameter(main[a:b].clone()) for a, b, _ in segs]
    groups = [{"params": [p for p, s in zip(params, segs) if s[2]], "weight_decay": wd},
              {"params": [p for p, s in zip(params, segs) if not s[2]], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"], foreach=True)
    for g in grads:
        gf = g.to(grad_dtype).float() * (1.0 if scale is None else torch.tensor(scale, dtype=torch.float32))
        for p, (a, b, _) in zip(params, segs):
            p.grad = gf[a:b].clone()
        opt.step()
    p_flat, m_flat, v_flat = torch.zeros_like(main), torch.zeros_like(main), torch.zeros_like(main)
    for p, (a, b, _) in zip(params, segs):
        p_flat[a:b], m_flat[a:b], v_flat[a:b] = p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
    return p_flat, m_flat, v_flat


def _close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-6, what: str = ""):
    """Equal to within rel of the tensor's scale (elementwise relative error is meaningless near zero)."""
    scale = want.abs().max().item() or 1.0
    err = (got.float() - want.float()).abs().max().item()
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel:g} * {scale:.3g}"


SIZES = [(1,), (300, 7, 513, 1, 1030), (2049, 5)]
CASES = [(torch.float32, 0.1, None), (torch.bfloat16, 0.1, 0.37), (torch.float32, 0.0, 2.0 ** -7),
         (torch.float16, 0.5, 0.8)]


@pytest.mark.parametrize("sizes", SIZES, ids=["one", "mixed", "two"])
@pytest.mark.parametrize("grad_dtype,wd,scale", CASES, ids=["fp32", "bf16_scaled", "fp32_nowd", "fp16"])
def test_reference_matches_torch_adamw(sizes, grad_dtype, wd, scale):
    main, grads, segs = _problem(sizes)
    p, m, v, _ = _run_flat("torch", main, grads, segs, grad_dtype, wd, scale)
    tp, tm, tv = _run_torch_adamw(main, grads, segs, grad_dtype, wd, scale)
    for got, want, k in ((p, tp, "p"), (m, tm, "m"), (v, tv, "v")):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=k)  # same torch ops: bitwise


def test_decay_plan_rows_and_mask():
    plan = build_decay_plan(1000, [(0, 256), (300, 301), (600, 900)], "cpu", block=256)
    assert plan.rows.tolist() == [1, 2, 3, 4]  # full, mixed (one element), mixed, mixed
    want = torch.zeros(1000, dtype=torch.bool)
    want[0:256] = want[300] = True
    want[600:900] = True
    assert torch.equal(plan.mask(), want)
    assert build_decay_plan(10, [], "cpu", block=256).rows.tolist() == [0]
    with pytest.raises(ValueError, match="outside"):
        build_decay_plan(10, [(5, 11)], "cpu")


def test_argument_errors():
    main, grads, segs = _problem((10,))
    m, v = torch.zeros_like(main), torch.zeros_like(main)
    kw = dict(weight_decay=0.1, step=1, impl="torch", **HP)
    with pytest.raises(ValueError, match="step counts"):
        fused_adamw_step(main, grads[0], m, v, None, **{**kw, "step": 0})
    with pytest.raises(TypeError, match="grad_scale"):
        fused_adamw_step(main, grads[0], m, v, None, grad_scale=torch.ones(1), **kw)
    with pytest.raises(ValueError, match="contiguous 1-D"):
        fused_adamw_step(main, grads[0][:-1], m, v, None, **kw)
    with pytest.raises(TypeError, match="float32"):
        fused_adamw_step(main.double(), grads[0], m, v, None, **kw)
    if not IN_CHILD and HAS_TRITON:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            fused_adamw_step(main, grads[0], m, v, None, **{**kw, "impl": "triton"})


def test_bf16_grads_keep_no_fp32_copy():
    """Torch path with bf16 main grads: the temporary fp32 grads are dropped after each region's step."""
    case = Case(dtype=torch.bfloat16, grad_reduce_in_fp32=False, optim={"grad_clip": 0.05})
    model, ddp, opt, ocfg = setup(single_ctx(), case)
    log = train_steps(single_ctx(), case, model, ddp, opt, ocfg, 0, 3, parts=1)
    assert all(r["stepped"] for r in log)
    assert all(g.dtype == torch.bfloat16 for r in opt.regions for g in r.grad_views())
    assert all(p.grad is None for r in opt.regions for p in r.main_params)


def test_fp16_low_precision_grads_match_fp32_buffer():
    """fp16 with fp16 main grads (norm-based inf check, unscale folded) equals the fp32-grad path: one micro-
    batch, so both buffers hold the same fp16 grads; the loss scale is a power of two, so scaling is exact."""
    base = with_optim(Case(dtype=torch.float16, inject_inf_at=3), grad_clip=0.05, hysteresis=1,
                      initial_loss_scale=1024.0)
    a = run_case(single_ctx(), base, parts=1, steps=6)
    b = run_case(single_ctx(), replace(base, grad_reduce_in_fp32=False), parts=1, steps=6)
    assert [r["stepped"] for r in b["log"]] == [i != 3 for i in range(6)] == [r["stepped"] for r in a["log"]]
    assert [r["scale"] for r in b["log"]] == [r["scale"] for r in a["log"]]
    for n, want in a["params"].items():
        np.testing.assert_array_equal(b["params"][n], want, err_msg=n)


# ----------------------------------------------------------------------------- Triton interpreter (child)
def test_kernels_in_interpreter():
    run_file_in_interpreter(__file__)


@pytest.mark.parametrize("sizes", SIZES, ids=["one", "mixed", "two"])
@pytest.mark.parametrize("grad_dtype,wd,scale", CASES, ids=["fp32", "bf16_scaled", "fp32_nowd", "fp16"])
@interp
def test_interp_kernel_matches_reference_and_torch(sizes, grad_dtype, wd, scale):
    main, grads, segs = _problem(sizes)
    out_dtype = torch.bfloat16 if grad_dtype != torch.float32 else None
    kp, km, kv, kout = _run_flat("triton", main, grads, segs, grad_dtype, wd, scale, out_dtype)
    rp, rm, rv, _ = _run_flat("torch", main, grads, segs, grad_dtype, wd, scale, out_dtype)
    tp, tm, tv = _run_torch_adamw(main, grads, segs, grad_dtype, wd, scale)
    for got, ref, tor, k in ((kp, rp, tp, "p"), (km, rm, tm, "m"), (kv, rv, tv, "v")):
        _close(got, ref, what=f"{k} vs reference")
        _close(got, tor, what=f"{k} vs torch AdamW")
    pad = torch.ones(main.numel(), dtype=torch.bool)
    for a, b, _ in segs:
        pad[a:b] = False
    assert (kp[pad] == 0).all() and (km[pad] == 0).all() and (kv[pad] == 0).all()  # padding stays zero
    if kout is not None:  # the kernel's bf16 copy is the main param rounded to nearest even, as torch casts
        assert torch.equal(kout, kp.to(torch.bfloat16))


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
@interp
def test_interp_split_kernel_matches_fp32_kernel(grad_dtype):
    """The kernel on split storage (bf16 high half + int16 low half) gives the fp32 storage's values bit for
    bit, and its high half is split_main's; odd sizes, a decay plan, padding."""
    main, grads, segs = _problem((300, 7, 513, 1, 1030))
    plan = build_decay_plan(main.numel(), [(a, b) for a, b, d in segs if d], "cpu", block=256)
    hi, lo = split_main(main)
    p, m1, v1, m2, v2 = main.clone(), *(torch.zeros_like(main) for _ in range(4))
    gs = torch.tensor(0.37)
    for step, g in enumerate(grads, start=1):
        kw = dict(weight_decay=0.1, step=step, grad_scale=gs, decay=plan, impl="triton", **HP)
        fused_adamw_step(p, g.to(grad_dtype), m1, v1, None, **kw)
        fused_adamw_step(hi, g.to(grad_dtype), m2, v2, None, main_lo=lo, **kw)
    assert torch.equal(join_main(hi, lo).view(torch.int32), p.view(torch.int32))
    assert torch.equal(hi.view(torch.int16), split_main(p)[0].view(torch.int16))
    assert torch.equal(m1, m2) and torch.equal(v1, v2)


@interp
def test_interp_uniform_decay_and_no_plan():
    """decay=None decays every element; weight_decay=0 none: both as the reference, across blocks."""
    main, grads, segs = _problem((1500, 700))
    for wd in (0.2, 0.0):
        res = []
        for impl in ("triton", "torch"):
            p, m, v = main.clone(), torch.zeros_like(main), torch.zeros_like(main)
            for step, g in enumerate(grads, start=1):
                fused_adamw_step(p, g, m, v, None, weight_decay=wd, step=step, impl=impl, **HP)
            res.append((p, m, v))
        for got, want in zip(*res):
            _close(got, want, what=f"wd={wd}")


def _triton_vs_foreach(case: Case, steps: int = 6):
    a = run_case(single_ctx(), with_optim(case, optimizer_impl="foreach"), parts=2, steps=steps)
    b = run_case(single_ctx(), with_optim(case, optimizer_impl="triton"), parts=2, steps=steps)
    assert [r["stepped"] for r in a["log"]] == [r["stepped"] for r in b["log"]]
    np.testing.assert_allclose([r["norm"] for r in b["log"]], [r["norm"] for r in a["log"]], rtol=1e-5)
    for n, piece in a["state"]["params"].items():
        got = b["state"]["params"][n]
        assert got["step"] == piece["step"]
        for k in ("main", "exp_avg", "exp_avg_sq"):
            _close(torch.from_numpy(got[k]), torch.from_numpy(piece[k]), rel=2e-6, what=f"{n}.{k}")
    return a, b


@pytest.mark.parametrize("case", [
    with_optim(Case(dtype=torch.bfloat16), grad_clip=0.05),
    with_optim(Case(dtype=torch.bfloat16), grad_clip=0.05, main_params="fp32"),
    Case(dtype=torch.bfloat16, grad_reduce_in_fp32=False),
    with_optim(Case(dtype=torch.float32), grad_clip=0.05),
    with_optim(Case(dtype=torch.float16, inject_inf_at=2), grad_clip=0.05, hysteresis=1,
               initial_loss_scale=1024.0),
], ids=["bf16_clip_split", "bf16_clip_fp32main", "bf16_bf16grads_split", "fp32_clip", "fp16_inf"])
@interp
def test_interp_optimizer_triton_matches_foreach(case):
    _, b = _triton_vs_foreach(case)
    split = case.dtype == torch.bfloat16 and case.optim.get("main_params", "auto") != "fp32"
    if case.dtype != torch.float32:  # the kernel wrote the model params: the main params cast (split: the
        for n, piece in b["state"]["params"].items():  # high half, ties away from zero)
            main = torch.from_numpy(piece["main"])
            want = (split_main(main)[0] if split else main.to(case.dtype)).float().numpy()
            np.testing.assert_array_equal(b["params"][n].reshape(-1), want, err_msg=n)


@interp
def test_interp_optimizer_state_moves_between_impls():
    """A triton run's state loads into a foreach optimizer and back (same per-param format)."""
    case = with_optim(Case(dtype=torch.bfloat16), grad_clip=0.05, optimizer_impl="triton")
    out = run_case(single_ctx(), case, parts=1, steps=3)
    for impl, main_params in (("foreach", "auto"), ("triton", "fp32"), ("triton", "split")):
        model = make_model(case.dtype)
        ddp = DistributedDataParallel(model, DDPConfig(bucket_size=37), single_ctx())
        cfg = with_optim(case, optimizer_impl=impl, main_params=main_params).optimizer_config()
        opt = build_optimizer(cfg, ddp, case.dtype, single_ctx())
        opt.load_state_dict([to_torch(out["state"])])
        again = to_numpy(opt.state_dict())
        for n, piece in out["state"]["params"].items():
            for k in ("main", "exp_avg", "exp_avg_sq"):
                np.testing.assert_array_equal(again["params"][n][k], piece[k], err_msg=f"{impl}: {n}.{k}")
            assert again["params"][n]["step"] == 3
        for n, p in model.named_parameters():  # the model's params are the loaded main values, cast
            main = torch.from_numpy(out["state"]["params"][n]["main"])
            want = split_main(main)[0] if main_params == "split" else main.to(case.dtype)
            assert torch.equal(p.detach().reshape(-1), want), f"{impl}/{main_params}: {n}"

