"""Attention dispatch: SDPA (causal, GQA, backends, packed rows) against the plain reference."""
import pytest
import torch

from model.ops import attention, attention_ref, flash_attn_available
from model.ops.attention import document_mask


def _qkv(bsz, t, hq, hk, d, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(bsz, t, h, d, generator=g).requires_grad_(grad) for h in (hq, hk, hk)]


@pytest.mark.parametrize("hq,hk", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_matches_reference_with_grads(hq, hk, causal):
    q, k, v = _qkv(2, 5, hq, hk, 8, grad=True)
    out = attention(q, k, v, causal=causal, impl="sdpa")
    ref = attention_ref(q, k, v, causal=causal)
    assert out.shape == (2, 5, hq, 8)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gqa_goes_to_sdpa_without_repeating_kv(monkeypatch):
    """On torch >= 2.5, GQA is SDPA's enable_gqa: no repeat_interleave copies of k and v (cuDNN does GQA natively)."""
    calls = []
    real = torch.Tensor.repeat_interleave
    monkeypatch.setattr(torch.Tensor, "repeat_interleave", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    q, k, v = _qkv(2, 6, 8, 2, 8)
    out = attention(q, k, v, impl="sdpa")
    assert calls == []
    torch.testing.assert_close(out, attention_ref(q, k, v), atol=1e-5, rtol=1e-5)


def test_sdpa_backend_math_and_auto_on_cpu():
    q, k, v = _qkv(1, 4, 4, 2, 8)
    ref = attention_ref(q, k, v)
    torch.testing.assert_close(attention(q, k, v, sdpa_backend="math"), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["sdpa", "torch"])
def test_packed_rows_attend_within_documents(impl):
    bsz, t, hq, hk, d = 2, 6, 4, 2, 8
    q, k, v = _qkv(bsz, t, hq, hk, d, seed=1)
    cu = torch.tensor([0, 2, 6, 9, 12], dtype=torch.int32)  # docs of 2 and 4 tokens in row 0; 3 and 3 in row 1
    out = attention(q, k, v, cu_seqlens=cu, max_seqlen=4, impl=impl)
    flat = [x.reshape(bsz * t, x.shape[2], d) for x in (q, k, v)]
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        doc = attention_ref(*(x[s:e][None] for x in flat))[0]
        torch.testing.assert_close(out.reshape(bsz * t, hq, d)[s:e], doc, atol=1e-5, rtol=1e-5)


def test_document_mask():
    mask = document_mask(1, 4, torch.tensor([0, 1, 4], dtype=torch.int32), causal=True, device="cpu")
    expected = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)


def test_dropout_runs_and_changes_output():
    q, k, v = _qkv(1, 8, 2, 2, 8)
    torch.manual_seed(0)
    out = attention(q, k, v, dropout_p=0.5, impl="sdpa")
    assert out.shape == q.shape and not torch.allclose(out, attention(q, k, v, impl="sdpa"))


def test_bad_arguments():
    q, k, v = _qkv(1, 4, 3, 2, 8)
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k, v)
    q, k, v = _qkv(1, 4, 4, 2, 8)
    with pytest.raises(ValueError, match="attn_impl"):
        attention(q, k, v, impl="xformers")
    with pytest.raises(ValueError, match="sdpa_backend"):
        attention(q, k, v, sdpa_backend="fast")
    if not flash_attn_available() or not q.is_cuda:
        with pytest.raises(RuntimeError, match="flash_attn"):
            attention(q, k, v, impl="flash_attn")
