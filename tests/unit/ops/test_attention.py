"""Attention dispatch: SDPA (causal, GQA, backends, packed rows) against the plain reference."""
import importlib

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


def test_config_and_ops_agree_on_the_choices():
    from model import config

    attn = importlib.import_module("model.ops.attention")

    assert config.ATTN_IMPLS == attn.ATTN_IMPLS and config.SDPA_BACKENDS == attn.SDPA_BACKENDS


def test_packed_docs_passed_in_equals_cu_seqlens_and_builds_the_mask_once(monkeypatch):
    attn = importlib.import_module("model.ops.attention")  # the package exports the function under that name
    q, k, v = _qkv(2, 6, 4, 2, 8, seed=3)
    cu = torch.tensor([0, 2, 6, 9, 12], dtype=torch.int32)
    want = attention(q, k, v, cu_seqlens=cu, impl="sdpa")
    calls = []
    real = attn.document_mask
    monkeypatch.setattr(attn, "document_mask", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    packed = attn.packed_docs(2, 6, cu, 4)
    for _ in range(3):  # three layers of one forward
        assert torch.equal(attention(q, k, v, packed=packed, impl="sdpa"), want)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="not both"):
        attention(q, k, v, cu_seqlens=cu, packed=packed)


def test_model_builds_one_document_mask_per_forward(monkeypatch):
    from model import Z2allConfig, Z2allForCausalLM

    attn = importlib.import_module("model.ops.attention")
    cfg = Z2allConfig(vocab_size=64, hidden_dim=32, n_layers=3, n_heads=4, n_kv_heads=2, multiple_of=16, max_seq_len=8)
    model = Z2allForCausalLM(cfg)
    calls = []
    real = attn.document_mask
    monkeypatch.setattr(attn, "document_mask", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    ids = torch.randint(0, 64, (2, 8))
    cu = torch.tensor([0, 3, 8, 12, 16], dtype=torch.int32)
    model(ids, targets=ids, cu_seqlens=cu).loss.backward()
    assert len(calls) == 1


def test_flex_is_refused_where_it_cannot_run():
    from model import Z2allConfig
    from tasks.setup import check_attention_impl

    q, k, v = _qkv(1, 4, 4, 2, 8)
    with pytest.raises(RuntimeError, match="attn_impl='flex' needs CUDA"):
        attention(q, k, v, impl="flex")
    with pytest.raises(ValueError, match="--attn_impl=flex needs CUDA"):
        check_attention_impl(Z2allConfig(attn_impl="flex"), torch.device("cpu"))
    with pytest.raises(ValueError, match="--attn_impl=flash_attn needs CUDA"):
        check_attention_impl(Z2allConfig(attn_impl="flash_attn"), torch.device("cpu"))
    with pytest.raises(ValueError, match="attention_dropout"):
        Z2allConfig(attn_impl="flex", attention_dropout=0.1).validate()


def test_auto_keeps_sdpa_for_packed_rows_on_the_cpu():
    from model.ops.attention import resolve_attention_impl

    q = torch.zeros(1, 4, 2, 8)
    assert resolve_attention_impl("auto", q, packed=True, dropout_p=0.0) in ("sdpa",)


@pytest.mark.parametrize("t,cu,causal", [
    (256, [0, 100, 256, 306, 512], True),
    (200, [0, 1, 77, 200, 331, 400, 401, 600], True),
    (200, [0, 1, 77, 200, 331, 400, 401, 600], False),
    (384, [0, 128, 256, 384, 400, 768], True),
    (130, [0, 130], True),
])
def test_flex_block_mask_equals_torchs_create_block_mask(t, cu, causal):
    """The tile classification from document edges gives the BlockMask that create_block_mask evaluates from
    every token pair: same partial and full tiles, same dense mask."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    from model.ops.attention import document_ids, flex_block_mask

    cu = torch.tensor(cu, dtype=torch.int32)
    bsz = int(cu[-1]) // t
    doc = document_ids(bsz, t, cu, "cpu")

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = doc[b, q_idx] == doc[b, kv_idx]
        return allowed & (q_idx >= kv_idx) if causal else allowed

    want = flex.create_block_mask(mask_mod, bsz, None, t, t, device="cpu")
    got = flex_block_mask(bsz, t, cu, causal, "cpu")
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert torch.equal(got.to_dense(), want.to_dense())
