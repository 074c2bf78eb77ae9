"""RoPE: the Triton kernel (CPU interpreter) against the reference; the cache; the rotate-half convention."""
import pytest
import torch

from model.ops import apply_rope, apply_rope_ref, rope_cache
from model.ops.rope import rope_qkv, rope_qkv_ref
from tests.unit.ops._check import (
    IN_CHILD,
    assert_close_dtype,
    assert_matches,
    interp,
    leaf,
    run_file_in_interpreter,
    run_with_grads,
)

# (B, T, Hq, Hk, D): MQA, GQA with head counts not powers of two, a sequence of 1, MHA
SHAPES = [(2, 3, 4, 1, 10), (1, 5, 6, 3, 16), (3, 1, 2, 2, 8), (1, 4, 3, 3, 6)]


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gathered", [False, True])
def test_triton_matches_reference(shape, dtype, gathered):
    bsz, t, hq, hk, d = shape
    cos, sin = rope_cache(t + 3, d, 10000.0)  # a longer table: its first T rows are used
    if gathered:  # (B, T, D/2), as after indexing with position_ids
        pos = torch.randint(0, t + 3, (bsz, t), generator=torch.Generator().manual_seed(0))
        cos, sin = cos[pos], sin[pos]
    q, k = leaf((bsz, t, hq, d), dtype, 1), leaf((bsz, t, hk, d), dtype, 2)
    assert_matches(
        lambda a, b: apply_rope(a, b, cos, sin, impl="triton"), lambda a, b: apply_rope_ref(a, b, cos, sin), (q, k)
    )


@interp
def test_strided_views_of_fused_qkv_and_broadcast_batch():
    bsz, t, hq, hk, d = 2, 5, 4, 2, 8
    qkv = leaf((bsz, t, hq + 2 * hk, d), torch.float32, 3)
    q, k = qkv[:, :, :hq], qkv[:, :, hq : hq + hk]
    cos, sin = rope_cache(t, d, 500.0)
    cos1, sin1 = cos[None], sin[None]  # (1, T, D/2) broadcasts over the batch
    assert_matches(
        lambda a: apply_rope(a[:, :, :hq], a[:, :, hq : hq + hk], cos1, sin1, impl="triton"),
        lambda a: apply_rope_ref(a[:, :, :hq], a[:, :, hq : hq + hk], cos1, sin1),
        (qkv,),
    )
    assert q.shape == (bsz, t, hq, d) and k.shape == (bsz, t, hk, d)


def test_rotate_half_convention_and_relative_positions():
    d = 8
    cos, sin = rope_cache(6, d, 10000.0)
    x = torch.randn(1, 6, 1, d)
    out, _ = apply_rope_ref(x, x, cos, sin)
    full_cos, full_sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
    rot = torch.cat((-x[..., d // 2 :], x[..., : d // 2]), -1)  # Hugging Face rotate_half
    torch.testing.assert_close(out, x * full_cos[None, :, None] + rot * full_sin[None, :, None])
    # dot products depend only on the distance between positions
    q = torch.randn(d).expand(1, 6, 1, d)
    qr, kr = apply_rope_ref(q, q, cos, sin)
    torch.testing.assert_close((qr[0, 3, 0] * kr[0, 1, 0]).sum(), (qr[0, 4, 0] * kr[0, 2, 0]).sum())


def test_rope_cache_scaling():
    cos, sin = rope_cache(16, 8, 10000.0)
    assert cos.shape == (16, 4) and cos.dtype == torch.float32
    lin_cos, _ = rope_cache(16, 8, 10000.0, "linear", 4.0)
    torch.testing.assert_close(lin_cos[8], cos[2])  # position 8 / 4 = position 2
    same, _ = rope_cache(16, 8, 10000.0, "dynamic", 2.0, original_max_seq_len=32)
    torch.testing.assert_close(same, cos)  # within the original length: unscaled
    dyn, _ = rope_cache(64, 8, 10000.0, "dynamic", 2.0, original_max_seq_len=32)
    base = 10000.0 * (2.0 * 64 / 32 - 1.0) ** (8 / 6)
    inv = 1.0 / base ** (torch.arange(0, 8, 2).float() / 8)
    torch.testing.assert_close(dyn[5], torch.cos(5 * inv))
    with pytest.raises(ValueError, match="scaling_type"):
        rope_cache(4, 8, 1.0, "yarn")


def test_bad_shapes():
    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 1, 8)
    cos, sin = rope_cache(3, 8, 10000.0)
    with pytest.raises(ValueError, match="cos/sin"):
        apply_rope(q, k, cos, sin)
    with pytest.raises(ValueError, match="share"):
        apply_rope(q, torch.randn(1, 4, 1, 6), cos, sin)


# fused split + RoPE of the qkv projection: (B, T, Hq, Hk, D) with GQA, MQA, T = 1, head_dim 12 and 64
QKV_SHAPES = [(2, 3, 4, 2, 12), (1, 5, 3, 1, 64), (3, 1, 2, 2, 12), (1, 4, 6, 3, 8)]


def _tables(bsz, t, d, gathered):
    cos, sin = rope_cache(t + 3, d, 10000.0)
    if gathered:
        pos = torch.randint(0, t + 3, (bsz, t), generator=torch.Generator().manual_seed(1))
        return cos[pos], sin[pos]
    return cos, sin


def _split_then_rope(qkv, hq, hk, cos, sin):
    q, k, v = qkv.unflatten(-1, (hq + 2 * hk, -1)).split([hq, hk, hk], dim=2)
    q, k = apply_rope_ref(q, k, cos, sin)
    return q, k, v


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", QKV_SHAPES)
@pytest.mark.parametrize("gathered", [False, True])
def test_rope_qkv_matches_reference(shape, dtype, gathered):
    bsz, t, hq, hk, d = shape
    cos, sin = _tables(bsz, t, d, gathered)
    qkv = leaf((bsz, t, (hq + 2 * hk) * d), dtype, 4)
    fused = lambda a: rope_qkv(a, hq, hk, cos, sin, impl="triton")  # noqa: E731
    assert_matches(fused, lambda a: rope_qkv_ref(a, hq, hk, cos, sin), (qkv,))
    assert_matches(fused, lambda a: _split_then_rope(a, hq, hk, cos, sin), (qkv,))


def _strided_grads(bsz, t, hq, hk, d, dtype):
    """dq, dv in SDPA's (B, H, T, D) layout seen as (B, T, H, D); dk a slice of a wider buffer."""
    g = torch.Generator().manual_seed(7)
    dq = torch.randn(bsz, hq, t, d, generator=g).to(dtype).transpose(1, 2)
    dk = torch.randn(bsz, t, hk + 1, d, generator=g).to(dtype)[:, :, 1:]
    dv = torch.randn(bsz, hk, t, d, generator=g).to(dtype).transpose(1, 2)
    return dq, dk, dv


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", QKV_SHAPES[:2])
def test_rope_qkv_noncontiguous_and_missing_grads(shape, dtype):
    bsz, t, hq, hk, d = shape
    cos, sin = _tables(bsz, t, d, gathered=False)
    qkv = leaf((bsz, t, (hq + 2 * hk) * d), dtype, 5)
    grads = _strided_grads(bsz, t, hq, hk, d, dtype)
    assert not grads[0].is_contiguous() and not grads[1].is_contiguous()
    _, (got,), _ = run_with_grads(lambda a: rope_qkv(a, hq, hk, cos, sin, impl="triton"), (qkv,), grads)
    _, (ref,), _ = run_with_grads(lambda a: rope_qkv_ref(a, hq, hk, cos, sin), (qkv,), grads)
    assert_close_dtype(got, ref, dtype)
    for used in ((0,), (1,), (2,), (0, 2)):  # the other outputs get no gradient: None in the backward
        outs = rope_qkv(qkv, hq, hk, cos, sin, impl="triton")
        (got,) = torch.autograd.grad([outs[i] for i in used], qkv, [grads[i] for i in used])
        r_outs = rope_qkv_ref(qkv, hq, hk, cos, sin)
        (ref,) = torch.autograd.grad([r_outs[i] for i in used], qkv, [grads[i] for i in used])
        assert_close_dtype(got, ref, dtype)


@interp
def test_rope_qkv_contiguous_outputs_of_one_allocation_and_input_freed():
    import weakref

    bsz, t, hq, hk, d = 2, 3, 4, 1, 8
    x = leaf((bsz, t, (hq + 2 * hk) * d), torch.float32, 6)
    qkv = x * 2.0  # a non-leaf, like the projection output
    alive = weakref.ref(qkv)
    cos, sin = rope_cache(t, d, 100.0)
    q, k, v = rope_qkv(qkv, hq, hk, cos, sin, impl="triton")
    del qkv
    assert alive() is None, "the qkv input must not be kept for backward"
    # three contiguous tensors carved from one allocation (attention kernels take them without copies)
    assert q._base is not None and q._base is k._base is v._base and q._base.numel() == bsz * t * (hq + 2 * hk) * d
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
    (q.sum() + k.sum() + v.sum()).backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_rope_qkv_torch_path_and_bad_shapes():
    bsz, t, hq, hk, d = 1, 4, 2, 1, 8
    cos, sin = rope_cache(t, d, 10000.0)
    qkv = torch.randn(bsz, t, (hq + 2 * hk) * d)
    for got, ref in zip(rope_qkv(qkv, hq, hk, cos, sin, impl="torch"), _split_then_rope(qkv, hq, hk, cos, sin)):
        torch.testing.assert_close(got, ref)
    with pytest.raises(ValueError, match="qkv width"):
        rope_qkv(torch.randn(bsz, t, 33), hq, hk, cos, sin)
    with pytest.raises(ValueError, match="qkv width"):  # head_dim 7 is odd
        rope_qkv(torch.randn(bsz, t, 28), hq, hk, cos, sin)
    with pytest.raises(ValueError, match="cos/sin"):
        rope_qkv(qkv, hq, hk, cos[:2], sin[:2])
    with pytest.raises(ValueError, match=r"\(B, T"):
        rope_qkv(qkv[0], hq, hk, cos, sin)


@pytest.mark.skipif(IN_CHILD, reason="this is the launcher")
def test_triton_kernels_under_interpreter():
    run_file_in_interpreter(__file__)
