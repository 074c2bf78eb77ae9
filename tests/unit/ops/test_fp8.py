"""FP8 scaling math and kernels (model/ops/fp8.py) and the FP8 linear layer (model/ops/fp8_linear.py) on the CPU.

- The scaling math against an independent float64 formula: power-of-two scales, the 448 bound, zero rows, non-finite
  rows, odd shapes; the round-trip error bound.
- The Triton kernels under the interpreter (quantize, dequantize, the add+RMSNorm and SwiGLU FP8 outputs) against
  the reference, bitwise: scales (integer math on equal amax) and codes. The interpreter's own fp32 -> e4m3
  conversion (triton/runtime/interpreter.py, _convert_float) adds the cut-off bit to the truncated mantissa without
  carrying into the exponent, so 127.8 becomes 64 where the GPU's cvt.rn.satfinite gives 128; the tests here swap
  that one conversion for torch's round-to-nearest-even (tests/triton_interp.py) and check
  everything else the kernels compute. tests/gpu checks the compiled kernels bitwise too.
- The FP8 linear (emulated GEMMs) against its plain-PyTorch recipe (fp8_linear_ref) at fp32 sum-order precision,
  and against the fp32 linear within the stated e4m3 tolerance.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from model.ops import add_rms_norm, swiglu, swiglu_down
from model.ops.fp8 import (AMAX_FLOOR, FP8_DTYPE, FP8_MAX, Fp8Input, check_fp8, dequantize_rows, dequantize_rows_ref,
                           fp8_input_ref, fp8_mm_ref, fp8_scales_ref, quantize_rows, quantize_rows_ref, row_blocks)
from model.ops.fp8_linear import Fp8WeightCache, fp8_linear, fp8_linear_ref, quantize_weight
from tests.triton_interp import e4m3_conversion_rounds_to_nearest_even
from tests.unit.ops._check import IN_CHILD, interp, leaf, run_file_in_interpreter

ODD_SHAPES = [(3, 130), (17, 7), (1, 1), (70, 24), (2, 9000)]
# e4m3 keeps 3 mantissa bits: an element rounds off by up to 2^-4 of itself, about 3.6% RMS; a GEMM of two such
# operands is off by about 3.8% of its norm (one operand: 2.7%, measured on random and outlier-heavy operands)
GEMM_TOL, ONE_OPERAND_TOL = 0.05, 0.04


def _rows(shape, seed, dtype=torch.float32, spread=True):
    """Rows whose magnitudes span many binades (row i scaled by 10^(i mod 7 - 3)), so every scale path is hit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if spread:
        x = x * (10.0 ** (torch.arange(shape[0]) % 7 - 3.0))[:, None]
    return x.to(dtype)


def _relerr(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _step(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """One e4m3 step at each value: 2^-3 of it in the normal range, 2^-9 * scale below it."""
    return torch.maximum(x.abs() * 2.0 ** -3, 2.0 ** -9 * scale)


def assert_same_quantization(q, scale, q_ref, scale_ref):
    """Scales bitwise equal (NaN where the reference has NaN); codes bitwise equal in the finite rows."""
    assert q.dtype == FP8_DTYPE and scale.dtype == torch.float32 and scale.shape == scale_ref.shape
    torch.testing.assert_close(scale, scale_ref, rtol=0, atol=0, equal_nan=True)
    finite = torch.isfinite(scale_ref).view(-1)
    width = q.shape[-1]
    assert torch.equal(q.reshape(-1, width).view(torch.uint8)[finite],
                       q_ref.reshape(-1, width).view(torch.uint8)[finite])


@pytest.fixture(autouse=True)
def _e4m3_conversion_rounds_to_nearest_even(monkeypatch):
    e4m3_conversion_rounds_to_nearest_even(monkeypatch)


# ----------------------------------------------------------------------------------------------- scaling math


def test_scales_are_the_smallest_powers_of_two_that_fit_448():
    amax = torch.cat([torch.logspace(-30, 38, 2001, dtype=torch.float64).float(),
                      torch.tensor([448.0, 448.0 * (1 + 2 ** -23), 1.75, 1.75 * (1 + 2 ** -23), 2.0, 1.0, 224.0])])
    scale, inv = fp8_scales_ref(amax)
    # the independent formula: 2^ceil(log2(amax / 448)) in float64
    want = torch.exp2(torch.ceil(torch.log2(amax.double() / FP8_MAX)))
    assert torch.equal(scale.double(), want)
    assert torch.equal(inv.double(), 1.0 / want)
    assert bool((amax.double() / scale.double() <= FP8_MAX).all())
    assert bool((amax.double() / scale.double() > FP8_MAX / 2).all())  # the top binade is used
    assert scale[-7].item() == 1.0 and scale[-6].item() == 2.0  # 448 fits exactly; one ulp more does not


def test_zero_tiny_and_non_finite_rows():
    x = torch.zeros(5, 33)
    x[1, 4] = 1e-36  # below the floor: scaled as the floor, so under e4m3's smallest step and flushed to 0
    x[2] = torch.linspace(-3, 3, 33)
    x[3, 7] = float("inf")
    x[4, 0] = float("nan")
    q, scale = quantize_rows_ref(x)
    floor_scale = fp8_scales_ref(torch.tensor([AMAX_FLOOR]))[0].item()
    assert scale[0].item() == scale[1].item() == floor_scale == 2.0 ** -108
    assert q[0].float().abs().sum() == 0 and q[1].float().abs().sum() == 0
    assert scale[2].item() == 2.0 ** -7  # 3 / 448 rounded up to a power of two
    assert math.isnan(scale[3].item()) and math.isnan(scale[4].item())  # the GEMM row goes NaN, not clipped
    assert torch.isfinite(dequantize_rows_ref(q[:3], scale[:3], torch.float32)).all()


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_within_half_an_e4m3_step_and_codes_never_pass_448(shape, dtype):
    x = _rows(shape, 1, dtype)
    q, scale = quantize_rows_ref(x)
    assert q.shape == shape and scale.shape == (shape[0], 1)
    codes = q.float()
    assert bool((codes.abs().amax(1) <= FP8_MAX).all()) and bool((codes.abs().amax(1) >= FP8_MAX / 2).all())  # rounding may land on 224
    deq = dequantize_rows_ref(q, scale, torch.float32)
    assert bool(((deq - x.float()).abs() <= _step(x.float(), scale) / 2).all())


# ------------------------------------------------------------------------------------------- Triton kernels


@interp
@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_kernel_matches_reference(shape, dtype):
    x = _rows(shape, 2, dtype)
    x[0, 0] = 0.0
    if shape[0] > 2:
        x[1] = 0.0  # an all-zero row
        x[2, -1] = float("nan")
    assert_same_quantization(*quantize_rows(x, impl="triton"), *quantize_rows_ref(x))


@interp
def test_quantize_kernel_reads_strided_rows():
    base = _rows((6, 50), 3, torch.bfloat16)
    x = base[:, 5:42]  # rows with a stride larger than the width
    assert_same_quantization(*quantize_rows(x, impl="triton"), *quantize_rows_ref(x))


@interp
@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_kernel_is_exact(shape, dtype):
    q, scale = quantize_rows_ref(_rows(shape, 4))
    # q * scale has at most 4 significant bits and a power-of-two scale: exact in bf16, so bitwise equal
    assert torch.equal(dequantize_rows(q, scale, dtype, impl="triton"), dequantize_rows_ref(q, scale, dtype))


def _norm_case(shape, dtype, seed):
    x = leaf(shape, dtype, seed)
    r = leaf(shape, torch.float32, seed + 1)
    w = leaf(shape[-1:], dtype, seed + 2)
    return x, r, w


@interp
@pytest.mark.parametrize("shape", [(3, 5, 37), (70, 24), (2, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rmsnorm_fp8_output_is_the_quantized_normed_output(shape, dtype):
    x, r, w = _norm_case(shape, dtype, 10)
    normed, s = add_rms_norm(x, r, w, 1e-5, impl="triton")
    f8, s8 = add_rms_norm(x, r, w, 1e-5, impl="triton", fp8_out=True)
    assert isinstance(f8, Fp8Input) and f8.shape == normed.shape and f8.anchor.stride() == (0,) * len(shape)
    assert torch.equal(s8, s)
    q_ref, scale_ref = quantize_rows_ref(normed.detach().reshape(-1, shape[-1]))
    assert_same_quantization(f8.data, f8.scale.reshape(-1, 1), q_ref, scale_ref)
    # the backward is the bf16 path's, fed through the anchor
    g, gs = torch.randn(shape).to(dtype), torch.randn(shape)
    want = torch.autograd.grad((normed, s), (x, r, w), (g, gs))
    got = torch.autograd.grad((f8.anchor, s8), (x, r, w), (g, gs))
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@interp
@pytest.mark.parametrize("shape", [(2, 3, 2 * 37), (70, 2 * 33), (2, 2 * 1100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_fp8_output_is_the_quantized_swiglu_output(shape, dtype):
    gate_up = leaf(shape, dtype, 20, scale=2.0)
    out = swiglu(gate_up, impl="triton")
    f8 = swiglu(gate_up, impl="triton", fp8_out=True)
    assert isinstance(f8, Fp8Input) and f8.shape == out.shape
    width = shape[-1] // 2
    q_ref, scale_ref = quantize_rows_ref(out.detach().reshape(-1, width))
    assert_same_quantization(f8.data, f8.scale.reshape(-1, 1), q_ref, scale_ref)
    g = torch.randn(out.shape).to(dtype)
    assert torch.equal(torch.autograd.grad(f8.anchor, gate_up, g)[0], torch.autograd.grad(out, gate_up, g)[0])


@interp
@pytest.mark.parametrize("recompute", [True, False])
def test_swiglu_down_fp8_triton_matches_the_torch_path(recompute):
    gate_up = leaf((2, 9, 2 * 48), torch.float32, 30, scale=2.0)
    weight = torch.nn.Parameter(torch.randn(32, 48) * 0.1)
    w8 = quantize_weight(weight, "torch")
    dy = torch.randn(2, 9, 32)
    outs = []
    for impl in ("triton", "torch"):
        y = swiglu_down(gate_up, weight, impl=impl, recompute=recompute, w8=w8)
        outs.append((y, *torch.autograd.grad(y, (gate_up, weight), dy)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # the same codes: fp32 sum order only


@interp
@pytest.mark.parametrize("fused", [True, False])
def test_fp8_linear_with_triton_quantization_matches_the_recipe(fused):
    x = leaf((3, 11, 64), torch.float32, 40)
    weight = torch.nn.Parameter(torch.randn(48, 64) * 0.1)
    dy = torch.randn(3, 11, 48)
    inp = x
    if fused:
        q, scale = quantize_rows(x.detach(), impl="triton")
        inp = Fp8Input(q.view(x.shape), scale.view(3, 11, 1), x)
    y = fp8_linear(inp, weight, None, quantize_weight(weight, "triton"), impl="triton")
    got = (y, *torch.autograd.grad(y, (x, weight), dy))
    want = fp8_linear_ref(x, weight, None, dy, keep_x=not fused)[:3]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- the FP8 linear


class Sink:
    """Takes the weight gradient of the weights it manages into its own fp64 buffers (the DDP's main grad)."""

    def __init__(self, weight):
        self.weight, self.acc = weight, torch.zeros(weight.shape, dtype=torch.float64)

    def accumulate_wgrad(self, weight, grad_out, inp):
        if weight is not self.weight:
            return False
        self.acc += grad_out.double().t() @ inp.double()
        return True


def _linear_case(bias, seed=0, shape=(2, 7, 32), n_out=48):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).requires_grad_()
    w = torch.nn.Parameter(torch.randn(n_out, shape[-1], generator=g) * 0.1)
    b = torch.nn.Parameter(torch.randn(n_out, generator=g)) if bias else None
    dy = torch.randn(*shape[:-1], n_out, generator=g)
    return x, w, b, dy


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("fused", [False, True])
def test_fp8_linear_matches_its_recipe(bias, fused):
    x, w, b, dy = _linear_case(bias)
    inp = add_fp8(x) if fused else x
    y = fp8_linear(inp, w, b, quantize_weight(w, "torch"), impl="torch")
    wrt = [t for t in (x, w, b) if t is not None]
    got = [y, *torch.autograd.grad(y, wrt, dy)]
    want = [t for t in fp8_linear_ref(x, w, b, dy, keep_x=not fused) if t is not None]
    for a, r in zip(got, want):
        assert a.shape == r.shape and a.dtype == r.dtype
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def add_fp8(x):
    """x as a fused producer hands it on: its FP8 rows, and x itself as the anchor (the reference producer)."""
    return fp8_input_ref(x)


@pytest.mark.parametrize("fused", [False, True])
def test_fp8_linear_follows_the_fp32_linear_within_the_e4m3_tolerance(fused):
    x, w, b, dy = _linear_case(True, seed=1, shape=(4, 64, 96), n_out=80)
    y = fp8_linear(add_fp8(x) if fused else x, w, b, quantize_weight(w, "torch"), impl="torch")
    got = [y, *torch.autograd.grad(y, (x, w, b), dy)]
    ref = F.linear(x, w, b)
    want = [ref, *torch.autograd.grad(ref, (x, w, b), dy)]
    assert _relerr(got[0], want[0]) < GEMM_TOL and _relerr(got[1], want[1]) < GEMM_TOL  # both operands in FP8
    assert _relerr(got[2], want[2]) < (ONE_OPERAND_TOL if fused else 1e-6)  # dW: bf16 GEMM of x or its FP8 copy
    torch.testing.assert_close(got[3], want[3])


@pytest.mark.parametrize("fused", [False, True])
def test_fp8_linear_gives_the_weight_gradient_to_the_sink(fused):
    x, w, _, dy = _linear_case(False, seed=2)
    sink = Sink(w)
    inp = add_fp8(x) if fused else x
    y = fp8_linear(inp, w, None, quantize_weight(w, "torch"), sink=sink, impl="torch")
    y.backward(dy)
    assert w.grad is None  # taken by the sink
    want = fp8_linear_ref(x, w, None, dy, keep_x=not fused)[2]
    torch.testing.assert_close(sink.acc.float(), want, rtol=1e-5, atol=1e-5)


def test_fp8_linear_saves_the_fp8_rows_of_a_fused_input_and_the_input_otherwise():
    x, w, _, _ = _linear_case(False, seed=3)
    w8 = quantize_weight(w, "torch")
    for fused, want in ((True, {FP8_DTYPE, torch.float32}), (False, {torch.float32})):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fp8_linear(add_fp8(x) if fused else x, w, None, w8, impl="torch")
        acts = [t for t in saved if t.numel() > w.numel() // 4]  # leave out scales
        assert {t.dtype for t in acts} == want - ({torch.float32} if fused else set()), [t.dtype for t in acts]


def test_fp8_mm_reference_is_the_scaled_product():
    a, b = _rows((5, 32), 5), _rows((3, 32), 6)
    (qa, sa), (qb, sb) = quantize_rows_ref(a), quantize_rows_ref(b)
    want = (qa.double() * sa.double()) @ (qb.double() * sb.double()).t()
    torch.testing.assert_close(fp8_mm_ref(qa, sa, qb, sb, torch.float32).double(), want, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------- the weight cache


def test_weight_cache_quantizes_once_per_step_and_after_any_change():
    w = torch.nn.Parameter(torch.randn(48, 32))
    cache = Fp8WeightCache("torch")
    first = cache.get(w)
    assert cache.get(w) is first  # a second forward of the step
    assert first.data.shape == (48, 32) and first.data_t.shape == (32, 48)
    assert cache.nbytes() == 2 * w.numel() + 4 * (48 + 32)  # two 1-byte layouts and their scales
    w.data.mul_(2.0)  # through .data: the version does not move, so only a new step shows it
    assert cache.get(w) is first
    cache.new_step()
    second = cache.get(w)
    assert second is not first and torch.equal(second.scale, first.scale * 2)
    with torch.no_grad():
        w.add_(1.0)  # an in-place op bumps the version
    assert cache.get(w) is not second
    cache.clear()
    assert cache.nbytes() == 0


# ------------------------------------------------------------------------------------------- start-up check


def test_fp8_is_refused_on_the_cpu_in_one_line():
    check_fp8("off", torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError) as e:
        check_fp8("rowwise", torch.device("cpu"), torch.bfloat16)
    msg = str(e.value)
    assert "\n" not in msg and "FP8 tensor cores" in msg and "cpu" in msg and "--fp8=off" in msg


def test_fp8_is_refused_on_a_gpu_without_fp8_tensor_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"A100-SXM4-80GB has compute capability 8\.0, and FP8 tensor cores need 8\.9"):
        check_fp8("rowwise", torch.device("cuda", 0), torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    check_fp8("rowwise", torch.device("cuda", 0), torch.bfloat16)
    with pytest.raises(ValueError, match="needs bfloat16 params"):
        check_fp8("rowwise", torch.device("cuda", 0), torch.float32)


def test_rows_wider_than_one_program_are_a_clear_error():
    with pytest.raises(ValueError, match="wider than the 65536 one program holds"):
        row_blocks(70000)


@pytest.mark.skipif(IN_CHILD, reason="this is the launcher")
def test_triton_kernels_under_interpreter():
    run_file_in_interpreter(__file__)
