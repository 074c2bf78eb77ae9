"""Z2allForCausalLM on the CPU (reference ops): shapes, losses, options, bad input, checkpointing, save/load."""
import math

import pytest
import torch
import torch.nn.functional as F

from model import Z2allConfig, Z2allForCausalLM


def tiny(**kw) -> Z2allConfig:
    base = dict(vocab_size=96, hidden_dim=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=48,
                max_seq_len=16)
    base.update(kw)
    return Z2allConfig(**base)


def make(seed=0, **kw) -> Z2allForCausalLM:
    torch.manual_seed(seed)
    return Z2allForCausalLM(tiny(**kw))


def ids(B=2, T=12, V=96, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_logits_only_when_asked_and_labels_loss_is_hf_shifted_mean():
    m = make()
    x = ids()
    out = m(x)
    assert out.loss is None and out.logits.shape == (2, 12, 96)
    labels = x.clone()
    labels[0, 5] = -100
    out2 = m(x, labels=labels)
    assert out2.logits is None
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, 96), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out2.loss, ref, rtol=1e-5, atol=1e-5)
    targets = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], 1)
    out3 = m(x, targets=targets, return_logits=True, loss_reduction="sum")
    n = (targets != -100).sum()
    torch.testing.assert_close(out3.loss, ref * n, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out3.logits, out.logits)


@pytest.mark.parametrize("kw", [dict(n_kv_heads=1), dict(n_kv_heads=4), dict(attention_bias=True),
                                dict(tie_word_embeddings=True)])
def test_variants_run_and_backprop(kw):
    m = make(**kw)
    m(ids(), labels=ids()).loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    names = dict(m.named_parameters())
    assert ("layers.0.attn.qkv_proj.bias" in names) == kw.get("attention_bias", False)
    assert "layers.0.attn.o_proj.bias" not in names


def test_param_names_and_tied_state_dict():
    m = make(tie_word_embeddings=True)
    assert m.lm_head.weight is m.embed_tokens.weight
    keys = set(m.state_dict())
    assert "lm_head.weight" not in keys
    expected = {"embed_tokens.weight", "norm.weight", "layers.1.attn_norm.weight", "layers.1.attn.qkv_proj.weight",
                "layers.1.attn.o_proj.weight", "layers.1.mlp_norm.weight", "layers.1.mlp.gate_up_proj.weight",
                "layers.1.mlp.down_proj.weight"}
    assert expected <= keys
    m2 = make(seed=5, tie_word_embeddings=True)
    m2.load_state_dict(m.state_dict())
    assert m2.lm_head.weight is m2.embed_tokens.weight and torch.equal(m2.lm_head.weight, m.embed_tokens.weight)
    assert set(make().state_dict()) == expected | {"layers.0." + k[9:] for k in expected if k.startswith("layers.1")} \
        | {"lm_head.weight"}


def test_scaled_init():
    m = make(hidden_dim=64, n_heads=4, n_kv_heads=4, intermediate_size=128, n_layers=8)
    q_std = m.layers[0].attn.qkv_proj.weight.std().item()
    o_std = m.layers[0].attn.o_proj.weight.std().item()
    d_std = m.layers[0].mlp.down_proj.weight.std().item()
    assert abs(q_std - 0.02) < 0.002
    assert abs(o_std - 0.02 / 4) < 0.0008 and abs(d_std - 0.02 / 4) < 0.0008


def test_num_params_and_flops():
    for tie in (False, True):
        m = make(tie_word_embeddings=tie)
        total = sum(p.numel() for p in m.parameters())
        assert m.num_params(non_embedding=False) == total
        n = total - 96 * 32 + (96 * 32 if tie else 0)
        assert m.num_params() == n
        assert m.flops_per_token(16) == 6 * n + 12 * 2 * 32 * 16


def test_bad_inputs():
    m = make()
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 96\)"):
        m(torch.tensor([[1, 96]]))
    with pytest.raises(ValueError, match="exceeds max_seq_len=16"):
        m(ids(T=17))
    with pytest.raises(ValueError, match="hidden_dim=30 is not divisible by n_heads=4"):
        Z2allForCausalLM(tiny(hidden_dim=30))
    with pytest.raises(ValueError, match="n_heads=4 is not divisible by n_kv_heads=3"):
        Z2allForCausalLM(tiny(n_kv_heads=3))
    with pytest.raises(ValueError, match=r"labels/targets \(other than -100\) must lie in \[0, 96\)"):
        m(ids(), labels=torch.full((2, 12), 96))
    with pytest.raises(ValueError, match="labels shape"):
        m(ids(), labels=ids(T=5))


def test_rope_scaling_allows_longer_and_dynamic_is_identity_within_max_len():
    x = ids(T=12)
    base = make()(x).logits
    dyn = make(rope_scaling_type="dynamic", rope_scaling_factor=2.0)
    torch.testing.assert_close(dyn(x).logits, base)
    assert dyn(ids(T=24)).logits.shape == (2, 24, 96)
    lin = make(rope_scaling_type="linear", rope_scaling_factor=2.0)
    assert not torch.allclose(lin(x).logits, base)
    assert lin(ids(T=24)).logits.shape == (2, 24, 96)


def test_packing_matches_separate_documents():
    m = make()
    a, b = ids(1, 5, seed=2), ids(1, 7, seed=3)
    packed = torch.cat([a, b], 1)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    out = m(packed, cu_seqlens=cu).logits
    torch.testing.assert_close(out[:, :5], m(a).logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 5:], m(b).logits, rtol=1e-5, atol=1e-5)
    pos = torch.cat([torch.arange(5), torch.arange(7)])[None]
    torch.testing.assert_close(m(packed, cu_seqlens=cu, position_ids=pos).logits, out)
    with pytest.raises(ValueError, match="cu_seqlens must rise"):
        m(packed, cu_seqlens=torch.tensor([0, 5, 11], dtype=torch.int32))


def test_dropout_only_in_training():
    m = make(attention_dropout=0.3, residual_dropout=0.3)
    x = ids()
    m.eval()
    torch.testing.assert_close(m(x).logits, m(x).logits)
    m.train()
    assert not torch.allclose(m(x).logits, m(x).logits)


def test_bf16_params_with_fp32_residual():
    m = make().to(torch.bfloat16)
    out = m(ids(), labels=ids(), return_logits=True)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_keeps_grads(mode):
    x, y = ids(), ids(seed=4)
    grads = []
    for ac in ("none", mode):
        m = make(activation_checkpointing=ac, attention_dropout=0.1, residual_dropout=0.1)
        torch.manual_seed(7)
        loss = m(x, labels=y).loss
        loss.backward()
        grads.append((loss.detach(), {k: p.grad for k, p in m.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for k, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][k], g, rtol=1e-6, atol=1e-7, msg=k)


def test_generate_greedy_cache_equals_no_cache_and_sampling_options():
    m = make()
    prompt = ids(2, 4)
    a = m.generate(prompt, 8, temperature=0.0)
    b = m.generate(prompt, 8, temperature=0.0, use_cache=False)
    assert a.shape == (2, 12) and torch.equal(a, b) and torch.equal(a[:, :4], prompt)
    assert torch.equal(m.generate(prompt, 8, top_k=1), a)
    g = torch.Generator().manual_seed(0)
    s = m.generate(prompt, 6, temperature=0.8, top_k=10, top_p=0.9, generator=g)
    assert s.shape == (2, 10) and int(s.max()) < 96
    eos = int(a[0, 4])
    e = m.generate(prompt[:1], 8, temperature=0.0, eos_id=eos)
    assert e.shape == (1, 5) and int(e[0, -1]) == eos
    with pytest.raises(ValueError, match="max_seq_len=16"):
        m.generate(prompt, 13)


def test_save_and_from_pretrained(tmp_path):
    for tie in (False, True):
        m = make(tie_word_embeddings=tie, attention_bias=True)
        m.save_pretrained(tmp_path / str(tie))
        m2 = Z2allForCausalLM.from_pretrained(tmp_path / str(tie))
        assert (m2.lm_head.weight is m2.embed_tokens.weight) == tie
        x = ids()
        torch.testing.assert_close(m2(x).logits, m(x).logits, rtol=0, atol=0)


def test_from_pretrained_run_and_step_dir(tmp_path):
    ckpt = pytest.importorskip("utils.checkpoint")
    m = make()
    mgr = ckpt.CheckpointManager(tmp_path / "run")
    for step in (1, 2):
        mgr.save(step=step, model_state=m.state_dict(), trainer_state={"iter": step},
                 extra_json={"config.json": m.config.to_dict()})
    x = ids()
    for path in (tmp_path / "run", tmp_path / "run" / "ckpt" / "step_000000002"):
        m2 = Z2allForCausalLM.from_pretrained(path, dtype=torch.float32)
        torch.testing.assert_close(m2(x).logits, m(x).logits, rtol=0, atol=0)
    with pytest.raises(ValueError):
        Z2allForCausalLM.from_pretrained(tmp_path / "nowhere")


def test_torch_compile_traces():
    m = make()
    x = ids()
    compiled = torch.compile(m, backend="aot_eager")
    loss = compiled(x, labels=x).loss
    torch.testing.assert_close(loss, m(x, labels=x).loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert math.isfinite(m.embed_tokens.weight.grad.sum().item())


def _saved_activation_storages(m, x, y) -> dict:
    """{storage data_ptr: (bytes, widths of the tensors saved on it)} of what one forward keeps for backward,
    parameters left out."""
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            entry = saved.setdefault(ptr, (t.untyped_storage().nbytes(), set()))
            entry[1].add(t.shape[-1] if t.dim() else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = m(x, targets=y).loss
    loss.backward()
    return saved


def test_selective_stores_gate_up_but_not_the_swiglu_output():
    # I=40 is no other width of the model (d=32, 2I=80, qkv 64, V=96), so a saved tensor of width I is a
    # SwiGLU intermediate
    I, B, T, L = 40, 2, 12, 2
    x, y = ids(B, T), ids(B, T, seed=3)
    saved = {ac: _saved_activation_storages(make(activation_checkpointing=ac, intermediate_size=I), x, y)
             for ac in ("none", "selective")}
    widths = {ac: set().union(*(w for _, w in s.values())) for ac, s in saved.items()}
    assert I in widths["none"] and I not in widths["selective"] and 2 * I in widths["selective"]
    # per layer the reference SwiGLU keeps silu(gate) and its output (fp32, N x I each) next to gate_up
    total = {ac: sum(n for n, _ in s.values()) for ac, s in saved.items()}
    assert total["none"] - total["selective"] == L * 2 * (B * T * I * 4)
