"""Every fused op's Triton path against its reference on the GPU, in fp32 and bf16 (skipped without CUDA)."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from model.ops import (  # noqa: E402
    add_rms_norm,
    add_rms_norm_ref,
    apply_rope,
    apply_rope_ref,
    attention,
    attention_ref,
    fused_linear_cross_entropy,
    linear_cross_entropy_ref,
    rms_norm,
    rms_norm_ref,
    rope_cache,
    silu_mul,
    swiglu,
    swiglu_ref,
)
from model.ops.rope import rope_qkv, rope_qkv_ref  # noqa: E402
from model.ops.swiglu import silu_mul_ref  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2)}


def _leaf(shape, dtype, seed, scale=1.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(shape, generator=g, device="cuda") * scale).to(dtype).requires_grad_(True)


def _close(a, b, dtype):
    atol, rtol = TOL[dtype]
    if dtype != torch.float32:
        atol *= max(1.0, b.float().abs().max().item())
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


def _check(fn, ref, inputs, dtype):
    outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads_out = [torch.randn_like(o) for o in outs]
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(outs, wrt, grads_out)
    r_outs = ref(*inputs)
    r_outs = r_outs if isinstance(r_outs, tuple) else (r_outs,)
    r_grads = torch.autograd.grad(r_outs, wrt, grads_out)
    for a, b in list(zip(outs, r_outs)) + list(zip(grads, r_grads)):
        assert a.dtype == b.dtype and a.shape == b.shape
        _close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 333, 2048), (1, 1, 4096), (1000, 96)])
def test_rmsnorm(shape, dtype):
    x, w = _leaf(shape, dtype, 1), _leaf(shape[-1:], dtype, 2)
    _check(lambda a, b: rms_norm(a, b, 1e-5, impl="triton"), lambda a, b: rms_norm_ref(a, b, 1e-5), (x, w), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_add_rmsnorm(dtype, residual_in_fp32):
    x = _leaf((3, 257, 2048), dtype, 1)
    r = _leaf((3, 257, 2048), torch.float32 if residual_in_fp32 else dtype, 2)
    w = _leaf((2048,), dtype, 3)
    _check(
        lambda a, b, c: add_rms_norm(a, b, c, 1e-5, impl="triton", residual_in_fp32=residual_in_fp32),
        lambda a, b, c: add_rms_norm_ref(a, b, c, 1e-5, residual_in_fp32=residual_in_fp32),
        (x, r, w), dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope(dtype):
    cos, sin = rope_cache(512, 64, 10000.0, device="cuda")
    qkv = _leaf((2, 300, 48, 64), dtype, 1)  # q 32 heads, k 8, v 8: strided views
    _check(
        lambda a: apply_rope(a[:, :, :32], a[:, :, 32:40], cos, sin, impl="triton"),
        lambda a: apply_rope_ref(a[:, :, :32], a[:, :, 32:40], cos, sin),
        (qkv,), dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(32, 8, 64), (12, 1, 128), (6, 3, 12)])
def test_rope_qkv(dtype, heads):
    hq, hk, d = heads
    cos, sin = rope_cache(512, d, 10000.0, device="cuda")
    qkv = _leaf((2, 300, (hq + 2 * hk) * d), dtype, 1)
    _check(lambda a: rope_qkv(a, hq, hk, cos, sin, impl="triton"), lambda a: rope_qkv_ref(a, hq, hk, cos, sin),
           (qkv,), dtype)
    pos = torch.randint(0, 512, (2, 300), device="cuda")
    _check(lambda a: rope_qkv(a, hq, hk, cos[pos], sin[pos], impl="triton"),
           lambda a: rope_qkv_ref(a, hq, hk, cos[pos], sin[pos]), (qkv,), dtype)
    # gradients in SDPA's (B, H, T, D) layout, as attention's backward hands them over
    grads = [torch.randn(2, h, 300, d, device="cuda", dtype=dtype).transpose(1, 2) for h in (hq, hk, hk)]
    (got,) = torch.autograd.grad(rope_qkv(qkv, hq, hk, cos, sin, impl="triton"), qkv, grads)
    (ref,) = torch.autograd.grad(rope_qkv_ref(qkv, hq, hk, cos, sin), qkv, grads)
    _close(got, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu(dtype):
    gu = _leaf((3, 100, 2 * 5632), dtype, 1, scale=2.0)
    _check(lambda a: swiglu(a, impl="triton"), swiglu_ref, (gu,), dtype)
    g, u = _leaf((7, 1000), dtype, 2), _leaf((7, 1000), dtype, 3)
    _check(lambda a, b: silu_mul(a, b, impl="triton"), silu_mul_ref, (g, u), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fused_linear_cross_entropy(dtype, reduction):
    n, v, d = 1000, 5003, 256
    h, w, b = _leaf((n, d), dtype, 1), _leaf((v, d), dtype, 2, scale=0.05), _leaf((v,), dtype, 3)
    t = torch.randint(0, v, (n,), device="cuda")
    t[::7] = -100
    _check(
        lambda a, c, e: fused_linear_cross_entropy(a, c, t, e, reduction=reduction, chunk_size=384, impl="triton"),
        lambda a, c, e: linear_cross_entropy_ref(a, c, t, e, reduction=reduction),
        (h, w, b), dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_ce_grad_scale_is_bitwise_mul(dtype):
    # the fused CE's backward scales its stored grads in place: the fp32 product of the element and the fp32
    # scale, rounded once to nearest even
    from model.ops.cross_entropy import scale_

    x = torch.randn(3 * 4096 + 7, device="cuda").to(dtype)
    g = torch.tensor(0.3712345, device="cuda")
    want = (x.float() * g).to(dtype)
    scale_(x, g, use_triton=True)
    assert torch.equal(x, want)


@pytest.mark.parametrize("shape", [(528, 2048), (3, 37), (1000, 96)])
def test_norm_colsum(shape):
    from model.ops.rmsnorm import colsum_triton

    p = torch.randn(shape, device="cuda")
    torch.testing.assert_close(colsum_triton(p, torch.float32), p.double().sum(0).float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(colsum_triton(p, torch.bfloat16), p.sum(0).bfloat16(), rtol=8e-3, atol=8e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("impl", ["auto", "sdpa", "flex"])
def test_attention(dtype, impl):
    q, k, v = _leaf((2, 128, 8, 64), dtype, 1), _leaf((2, 128, 2, 64), dtype, 2), _leaf((2, 128, 2, 64), dtype, 3)
    _check(lambda a, b, c: attention(a, b, c, impl=impl), lambda a, b, c: attention_ref(a, b, c), (q, k, v), dtype)
    cu = torch.tensor([0, 50, 128, 200, 256], dtype=torch.int32, device="cuda")
    _check(
        lambda a, b, c: attention(a, b, c, cu_seqlens=cu, max_seqlen=78, impl=impl),
        lambda a, b, c: attention_ref(a, b, c, cu_seqlens=cu),
        (q, k, v), dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_flex_packed_rows_odd_shapes(dtype):
    """FlexAttention on rows of 200 tokens (not a multiple of its 128-token tiles), documents that start inside
    tiles and one of a single token, 6 query heads over 2 kv heads, head dim 40, forward and backward."""
    bsz, t = 3, 200
    q, k, v = _leaf((bsz, t, 6, 40), dtype, 4), _leaf((bsz, t, 2, 40), dtype, 5), _leaf((bsz, t, 2, 40), dtype, 6)
    cu = torch.tensor([0, 1, 77, 200, 331, 400, 401, 600], dtype=torch.int32, device="cuda")
    _check(lambda a, b, c: attention(a, b, c, cu_seqlens=cu, max_seqlen=131, impl="flex"),
           lambda a, b, c: attention_ref(a, b, c, cu_seqlens=cu), (q, k, v), dtype)


def test_auto_takes_flex_for_packed_rows_without_flash_attn():
    from model.ops import flash_attn_available
    from model.ops.attention import resolve_attention_impl

    q = torch.zeros(1, 8, 2, 16, device="cuda", dtype=torch.bfloat16)
    want = "flash_attn" if flash_attn_available() else "flex"
    assert resolve_attention_impl("auto", q, packed=True, dropout_p=0.0) == want
    assert resolve_attention_impl("auto", q, packed=True, dropout_p=0.1) in ("flash_attn", "sdpa")
    assert resolve_attention_impl("auto", q, packed=False, dropout_p=0.0) in ("flash_attn", "sdpa")
