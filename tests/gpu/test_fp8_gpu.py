"""--fp8 on a GPU with FP8 tensor cores (skipped without CUDA or below compute capability 8.9).

- torch._scaled_mm's row-wise path against the fp32 reference of the same codes and scales;
- the compiled quantize/dequantize kernels and the add+RMSNorm / SwiGLU FP8 outputs against the reference, bitwise
  (the GPU's conversion rounds to nearest even, as torch's does);
- the FP8 linear's forward and backward against its recipe and against the bf16 linear within the e4m3 tolerance;
- train.py runs of a tiny model: --fp8=rowwise follows the bf16 loss, resumes bitwise, switches to and from bf16 at
  resumes, and gives the same losses with ZeRO-1's overlapped param gather and with full recompute.
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from model.ops.fp8 import fp8_unsupported

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or fp8_unsupported(torch.device("cuda")) is not None,
                                reason="needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+)")

import train  # noqa: E402
from model.ops import add_rms_norm, swiglu, swiglu_down  # noqa: E402
from model.ops.fp8 import (FP8_DTYPE, Fp8Input, dequantize_rows, dequantize_rows_ref, fp8_mm,  # noqa: E402
                           fp8_mm_ref, quantize_rows, quantize_rows_ref)
from model.ops.fp8_linear import fp8_linear, fp8_linear_ref, quantize_weight  # noqa: E402
from tests.support.runs import make_run, read_losses  # noqa: E402

DEV = torch.device("cuda")
GEMM_TOL = 0.05  # e4m3 on both operands: about 3.8% of the norm (tests/unit/ops/test_fp8.py)


def _relerr(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _rows(shape, seed, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, generator=g, device="cuda")
    return (x * (10.0 ** (torch.arange(shape[0], device="cuda") % 7 - 3.0))[:, None]).to(dtype)


def assert_same_quantization(q, scale, q_ref, scale_ref):
    torch.testing.assert_close(scale.view(-1), scale_ref.view(-1), rtol=0, atol=0, equal_nan=True)
    finite = torch.isfinite(scale_ref).view(-1)
    width = q.shape[-1]
    assert torch.equal(q.reshape(-1, width).view(torch.uint8)[finite],
                       q_ref.reshape(-1, width).view(torch.uint8)[finite])


@pytest.mark.parametrize("m,k,n", [(37, 64, 48), (1000, 256, 384), (4096, 2048, 3072), (512, 5632, 2048)])
@pytest.mark.parametrize("fast_accum", [True, False])
def test_scaled_mm_rowwise_matches_the_reference(m, k, n, fast_accum):
    (a, sa), (b, sb) = quantize_rows_ref(_rows((m, k), 1)), quantize_rows_ref(_rows((n, k), 2))
    got = fp8_mm(a, sa, b, sb, torch.bfloat16, fast_accum=fast_accum)
    want = fp8_mm_ref(a, sa, b, sb, torch.float32)
    assert got.dtype == torch.bfloat16 and got.shape == (m, n)
    # bf16 output rounding (2^-9) plus the order (and, fast, the precision) of the tensor cores' sums
    assert _relerr(got, want) < (4e-3 if fast_accum else 3e-3)


@pytest.mark.parametrize("shape", [(3, 130), (17, 7), (1, 1), (70, 24), (2, 9000), (4096, 2048)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_and_dequantize_kernels_match_the_reference_bitwise(shape, dtype):
    x = _rows(shape, 3, dtype)
    if shape[0] > 2:
        x[1] = 0.0
        x[2, -1] = float("inf")
    q, scale = quantize_rows(x, impl="triton")
    assert q.dtype == FP8_DTYPE
    assert_same_quantization(q, scale, *quantize_rows_ref(x))
    torch.testing.assert_close(dequantize_rows(q, scale, dtype, impl="triton"), dequantize_rows_ref(q, scale, dtype),
                               rtol=0, atol=0, equal_nan=True)  # bitwise; the inf row's NaN scale gives NaN


@pytest.mark.parametrize("shape", [(3, 5, 37), (4096, 2048), (2, 1000)])
def test_add_rmsnorm_fp8_output_is_the_bf16_output_quantized(shape):
    x = _rows((int(np.prod(shape[:-1])), shape[-1]), 4).view(shape).requires_grad_()
    r = torch.randn(shape, device="cuda", requires_grad=True)
    w = (1 + 0.1 * torch.randn(shape[-1], device="cuda")).bfloat16().requires_grad_()
    normed, s = add_rms_norm(x, r, w, 1e-5, impl="triton")
    f8, s8 = add_rms_norm(x, r, w, 1e-5, impl="triton", fp8_out=True)
    assert torch.equal(s, s8)
    assert_same_quantization(f8.data, f8.scale, *quantize_rows_ref(normed.detach().reshape(-1, shape[-1])))
    g, gs = torch.randn_like(normed), torch.randn_like(s)
    for a, b in zip(torch.autograd.grad((f8.anchor, s8), (x, r, w), (g, gs)),
                    torch.autograd.grad((normed, s), (x, r, w), (g, gs))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(2, 3, 2 * 37), (16384, 2 * 5632), (70, 2 * 1100)])
def test_swiglu_fp8_output_is_the_bf16_output_quantized(shape):
    gate_up = (2 * torch.randn(shape, device="cuda")).bfloat16().requires_grad_()
    out = swiglu(gate_up, impl="triton")
    f8 = swiglu(gate_up, impl="triton", fp8_out=True)
    assert_same_quantization(f8.data, f8.scale, *quantize_rows_ref(out.detach().reshape(-1, shape[-1] // 2)))
    g = torch.randn_like(out)
    assert torch.equal(torch.autograd.grad(f8.anchor, gate_up, g)[0], torch.autograd.grad(out, gate_up, g)[0])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_matches_its_recipe_and_the_bf16_linear(fused, bias):
    x = _rows((8 * 128, 512), 5).view(8, 128, 512) / 100
    x.requires_grad_()
    w = torch.nn.Parameter((0.05 * torch.randn(768, 512, device="cuda")).bfloat16())
    b = torch.nn.Parameter(torch.randn(768, device="cuda").bfloat16()) if bias else None
    dy = torch.randn(8, 128, 768, device="cuda").bfloat16()
    inp = x
    if fused:
        q, scale = quantize_rows(x.detach(), impl="triton")
        inp = Fp8Input(q.view(x.shape), scale.view(8, 128, 1), x)
    y = fp8_linear(inp, w, b, quantize_weight(w), impl="triton")
    wrt = [t for t in (x, w, b) if t is not None]
    got = [y, *torch.autograd.grad(y, wrt, dy)]
    recipe = [t for t in fp8_linear_ref(x, w, b, dy, keep_x=not fused) if t is not None]
    ref = torch.nn.functional.linear(x, w, b)
    bf16 = [ref, *torch.autograd.grad(ref, wrt, dy)]
    for name, a, r, plain in zip(("y", "dx", "dw", "db"), got, recipe, bf16):
        assert a.dtype == torch.bfloat16 and a.shape == r.shape, name
        assert _relerr(a, r) < 1e-2, name  # the recipe's own numbers up to bf16 rounding and sum order
        assert _relerr(a, plain) < GEMM_TOL, name


@pytest.mark.parametrize("recompute", [True, False])
def test_swiglu_down_fp8_matches_the_torch_path(recompute):
    gate_up = (2 * torch.randn(4, 256, 2 * 512, device="cuda")).bfloat16().requires_grad_()
    w = torch.nn.Parameter((0.05 * torch.randn(384, 512, device="cuda")).bfloat16())
    w8, dy = quantize_weight(w), torch.randn(4, 256, 384, device="cuda").bfloat16()
    outs = []
    for impl in ("triton", "torch"):
        y = swiglu_down(gate_up, w, impl=impl, recompute=recompute, w8=w8)
        outs.append((y, *torch.autograd.grad(y, (gate_up, w), dy)))
    for a, b in zip(*outs):
        assert _relerr(a, b) < 1e-2


# ----------------------------------------------------------------------------------------------- train.py runs

COMMON = ["--eval_interval=0", "--attention_dropout=0", "--residual_dropout=0", "--hidden_dim=64", "--n_heads=4",
          "--n_kv_heads=2", "--max_seq_len=32", "--device=cuda", "--dtype=bfloat16"]


def _losses(out_dir):
    return np.array([loss for _, loss in read_losses(out_dir)])


def test_fp8_follows_the_bf16_loss_and_resumes_bitwise(tmp_path):
    cfg_file, bf16_args, _ = make_run(tmp_path, "bf16")
    _, args, out = make_run(tmp_path, "fp8")
    base = [cfg_file, *COMMON, "--max_iters=20", "--save_interval=10"]
    assert train.main([*base, *bf16_args]) == 0
    assert train.main([*base, *args, "--fp8=rowwise"]) == 0
    bf16, fp8 = _losses(tmp_path / "bf16"), _losses(out)
    assert len(fp8) == 20 and fp8[-1] < fp8[0] - 0.5
    np.testing.assert_allclose(fp8, bf16, rtol=5e-2)
    resumed = tmp_path / "fp8_resumed"  # the run rewound to its step-10 checkpoint trains steps 11-20 again
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "ckpt" / "step_000000020")
    assert train.main([f"--out_dir={resumed}", "--resume"]) == 0
    assert read_losses(resumed) == read_losses(out)


def test_a_run_continues_from_bf16_to_fp8_and_back(tmp_path):
    cfg_file, args, out = make_run(tmp_path, "switch")
    assert train.main([cfg_file, *COMMON, *args, "--max_iters=8", "--save_interval=4"]) == 0
    assert train.main([*args, "--resume", "--fp8=rowwise", "--max_iters=16"]) == 0
    with open(out / "exp_config.json") as f:
        assert json.load(f)["config"]["model"]["fp8"] == "rowwise"
    assert train.main([*args, "--resume", "--fp8=off", "--max_iters=24"]) == 0
    losses = _losses(out)
    assert len(losses) == 24 and losses[-1] < losses[0] - 0.5
    assert os.path.isfile(out / "ckpt" / "step_000000024" / "model.safetensors")


@pytest.mark.parametrize("extra", [["--use_distributed_optimizer", "--overlap_param_gather"],
                                   ["--activation_checkpointing=full"]])
def test_fp8_losses_do_not_depend_on_zero1_overlap_or_full_recompute(tmp_path, extra):
    cfg_file, a_args, _ = make_run(tmp_path, "plain")
    _, b_args, _ = make_run(tmp_path, "variant")
    base = [cfg_file, *COMMON, "--max_iters=12", "--save_interval=12", "--fp8=rowwise"]
    assert train.main([*base, *a_args]) == 0
    assert train.main([*base, *b_args, *extra]) == 0
    # ZeRO-1 on one rank and recompute run the same FP8 GEMMs on the same copies; only the attention backward's
    # accumulation order may differ between runs
    np.testing.assert_allclose(_losses(tmp_path / "variant"), _losses(tmp_path / "plain"), rtol=1e-3)
