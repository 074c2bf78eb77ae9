"""patch_hf on tiny random transformers models (no downloads): same logits, loss and gradients as unpatched."""
import copy
import sys

import pytest
import torch

from tests.unit.ops._check import IN_CHILD, interp, run_file_in_interpreter

transformers = pytest.importorskip("transformers")

from model.hf import patch_hf  # noqa: E402


def _tiny(family: str):
    common = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    if family == "llama":
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(cfg)
    elif family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    else:
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common))
    return model.float().train()


def _run(model, ids, labels):
    logits = model(input_ids=ids).logits
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _compare(family, impl, monkeypatch):
    model = _tiny(family)
    modeling = sys.modules[type(model).__module__]
    # the RoPE patch replaces a module global: restore it after the test
    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", modeling.apply_rotary_pos_emb)
    ref_model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 96, (2, 7), generator=gen)
    labels = ids.clone()
    labels[0, :3] = -100
    ref = _run(ref_model, ids, labels)
    patch_hf(model, impl=impl)
    assert modeling.apply_rotary_pos_emb.z2all_patched
    out = _run(model, ids, labels)
    torch.testing.assert_close(out[0], ref[0], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out[1], ref[1], atol=2e-5, rtol=2e-5)
    assert out[2].keys() == ref[2].keys()
    for name in ref[2]:
        torch.testing.assert_close(out[2][name], ref[2][name], atol=2e-5, rtol=2e-5, msg=name)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_patched_torch_impl_matches_unpatched(family, monkeypatch):
    _compare(family, "torch", monkeypatch)


@interp
def test_patched_triton_kernels_match_unpatched(monkeypatch):
    _compare("llama", "triton", monkeypatch)


def test_num_items_in_batch_and_unsupported_model(monkeypatch):
    model = _tiny("llama")
    modeling = sys.modules[type(model).__module__]
    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", modeling.apply_rotary_pos_emb)
    ids = torch.randint(0, 96, (1, 5), generator=torch.Generator().manual_seed(2))
    mean_loss = model(input_ids=ids, labels=ids).loss
    patch_hf(model, impl="torch")
    summed = model(input_ids=ids, labels=ids, num_items_in_batch=8).loss
    torch.testing.assert_close(summed, mean_loss * 4 / 8)  # 4 predicted tokens
    with pytest.raises(ValueError, match="supports"):
        patch_hf(torch.nn.Linear(2, 2))


def test_fp32_model_under_bf16_autocast(monkeypatch):
    """How bench/mfu.py and most HF training run it: fp32 params, bf16 autocast; loss and grads as unpatched."""
    model = _tiny("llama")
    modeling = sys.modules[type(model).__module__]
    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", modeling.apply_rotary_pos_emb)
    ref_model = copy.deepcopy(model)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(3))
    patch_hf(model, impl="torch", chunk_size=5)  # several chunks: the in-place accumulation of the head's grad
    losses, grads = [], []
    for m in (ref_model, model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        losses.append(loss.float())
        grads.append(m.lm_head.weight.grad)
    assert grads[1].dtype == torch.float32
    torch.testing.assert_close(losses[1], losses[0], atol=3e-2, rtol=1e-2)
    torch.testing.assert_close(grads[1], grads[0], atol=5e-3, rtol=5e-2)


@pytest.mark.skipif(IN_CHILD, reason="this is the launcher")
def test_triton_kernels_under_interpreter():
    run_file_in_interpreter(__file__)
