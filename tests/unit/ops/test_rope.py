"""RoPE: the Triton kernel (CPU interpreter) against the reference; the cache; the rotate-half convention."""
import pytest
import torch

from model.ops import apply_rope, apply_rope_ref, rope_cache
from tests.unit.ops._check import IN_CHILD, assert_matches, interp, leaf, run_file_in_interpreter

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


@pytest.mark.skipif(IN_CHILD, reason="this is the launcher")
def test_triton_kernels_under_interpreter():
    run_file_in_interpreter(__file__)
