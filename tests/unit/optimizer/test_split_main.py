"""Split main params (--main_params=split): the bit split/join, the reference step on split storage, the config.

The Triton kernel's split path runs in the interpreter child of test_fused_adamw.py and on the GPU in
tests/gpu/test_fused_adamw_gpu.py; here is what needs no kernel.
"""
from __future__ import annotations

import pytest
import torch

from optimizer import build_optimizer
from optimizer.config import OptimizerConfig
from optimizer.fused_adamw import fused_adamw_step, join_main, split_main
from optimizer.mixed_precision import resolve_main_params
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from tests.support.toy import make_model, single_ctx

HP = dict(lr=3e-2, beta1=0.9, beta2=0.95, eps=1e-8)


def _special_values() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(20000, generator=g) * torch.logspace(-40, 38, 20000)  # subnormals to near the max
    edges = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 3.4028235e38, -3.4028235e38, 1e-45, -1e-45,
                          1.0 + 2.0 ** -8, -(1.0 + 2.0 ** -8), 1.0 + 3 * 2.0 ** -8, 65504.0, -2.0 ** -126])
    return torch.cat([wide, edges])


def test_split_then_join_is_exact():
    x = _special_values()
    hi, lo = split_main(x)
    assert hi.dtype == torch.bfloat16 and lo.dtype == torch.int16 and hi.shape == lo.shape == x.shape
    assert torch.equal(join_main(hi, lo).view(torch.int32), x.view(torch.int32))  # every bit, signed zeros too


def test_high_half_is_nearest_bf16_ties_away_from_zero():
    x = _special_values()
    hi, _ = split_main(x)
    rne = x.to(torch.bfloat16)
    low_bits = x.view(torch.int32) & 0xFFFF
    tie = low_bits == 0x8000
    assert tie.sum() >= 3  # the edges hold ties that round to even downwards and upwards
    assert torch.equal(hi[~tie].view(torch.int16), rne[~tie].view(torch.int16))
    # a tie goes to the larger magnitude, whichever of its neighbours is even
    assert (hi[tie].float().abs() > x[tie].abs()).all()


def test_nan_stays_nan():
    x = torch.tensor([float("nan"), 1.0, -float("nan")])
    hi, lo = split_main(x)
    assert torch.isnan(hi[0]) and torch.isnan(hi[2]) and lo[0] == 0
    assert torch.isnan(join_main(hi, lo)[0]) and join_main(hi, lo)[1] == 1.0


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
def test_reference_step_on_split_storage_equals_fp32_storage(grad_dtype):
    """The torch path of fused_adamw_step with main_lo: the joined values are the fp32 path's, bit for bit."""
    g = torch.Generator().manual_seed(1)
    main = torch.randn(3001, generator=g)
    hi, lo = split_main(main)
    m1, v1, m2, v2 = (torch.zeros(3001) for _ in range(4))
    scale = torch.tensor(0.5)
    for step in range(1, 6):
        grad = (torch.randn(3001, generator=g) * 0.1).to(grad_dtype)
        kw = dict(weight_decay=0.1, step=step, grad_scale=scale, impl="torch", **HP)
        fused_adamw_step(main, grad, m1, v1, None, **kw)
        fused_adamw_step(hi, grad, m2, v2, None, main_lo=lo, **kw)
    assert torch.equal(join_main(hi, lo), main)
    assert torch.equal(m1, m2) and torch.equal(v1, v2)
    assert torch.equal(hi.view(torch.int16), split_main(main)[0].view(torch.int16))


def test_split_argument_errors():
    hi, lo = split_main(torch.randn(10))
    m, v, grad = torch.zeros(10), torch.zeros(10), torch.zeros(10)
    kw = dict(weight_decay=0.0, step=1, impl="torch", **HP)
    with pytest.raises(TypeError, match="bfloat16"):
        fused_adamw_step(hi.float(), grad, m, v, None, main_lo=lo, **kw)
    with pytest.raises(TypeError, match="int16"):
        fused_adamw_step(hi, grad, m, v, None, main_lo=lo.int(), **kw)
    with pytest.raises(ValueError, match="param_out=None"):
        fused_adamw_step(hi, grad, m, v, torch.zeros(10, dtype=torch.bfloat16), main_lo=lo, **kw)
    with pytest.raises(ValueError, match="contiguous 1-D"):
        fused_adamw_step(hi, grad, m, v, None, main_lo=lo[:-1], **kw)


def test_resolve_main_params():
    assert resolve_main_params("auto", "triton", torch.bfloat16) == "split"
    assert resolve_main_params("auto", "foreach", torch.bfloat16) == "fp32"
    assert resolve_main_params("auto", "triton", torch.float16) == "fp32"
    assert resolve_main_params("auto", "triton", torch.float32) == "fp32"
    assert resolve_main_params("fp32", "triton", torch.bfloat16) == "fp32"
    assert resolve_main_params("split", "triton", torch.bfloat16) == "split"
    with pytest.raises(ValueError, match="--dtype=bfloat16"):
        resolve_main_params("split", "triton", torch.float16)
    with pytest.raises(ValueError, match="--optimizer_impl=triton"):
        resolve_main_params("split", "torch_fused", torch.bfloat16)
    with pytest.raises(ValueError, match="--main_params"):
        OptimizerConfig(main_params="bf16").validate()


def test_split_with_the_foreach_impl_is_a_clear_error():
    model = make_model(torch.bfloat16)
    ddp = DistributedDataParallel(model, DDPConfig(bucket_size=100), single_ctx())
    cfg = OptimizerConfig(optimizer_impl="foreach", main_params="split", warmup_iters=0)
    with pytest.raises(ValueError, match="needs --optimizer_impl=triton"):
        build_optimizer(cfg, ddp, torch.bfloat16, single_ctx())
