"""Export to Hugging Face (Llama / Qwen2) matches our logits; import(export(x)) == x bitwise; the export stops
transformers' generate at the end-of-turn token."""
import json

import pytest
import torch

from model import Z2allConfig, Z2allForCausalLM
from model.hf.export_hf import main as export_main
from model.hf.import_hf import import_hf

transformers = pytest.importorskip("transformers")

CASES = {
    "llama_gqa_untied": dict(n_kv_heads=2, tie_word_embeddings=False),
    "llama_mqa_tied_linear_rope": dict(n_kv_heads=1, tie_word_embeddings=True, rope_scaling_type="linear",
                                       rope_scaling_factor=2.0),
    "qwen2_bias": dict(n_kv_heads=2, attention_bias=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_matches_transformers_and_import_roundtrips(tmp_path, case):
    torch.manual_seed(0)
    cfg = Z2allConfig(vocab_size=128, hidden_dim=64, n_layers=2, n_heads=4, intermediate_size=96, max_seq_len=32,
                      rope_theta=500.0, **CASES[case])
    model = Z2allForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm weights and biases so a wrong mapping cannot hide behind ones/zeros
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("bias"):
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.3)
    model.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "tokenizer").mkdir()
    (tmp_path / "saved" / "tokenizer" / "tokenizer.json").write_text("{}")
    export_main([f"--ckpt={tmp_path / 'saved'}", f"--out_dir={tmp_path / 'hf'}"])
    assert (tmp_path / "hf" / "tokenizer.json").is_file()

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    expected = "Qwen2ForCausalLM" if cfg.attention_bias else "LlamaForCausalLM"
    assert type(hf).__name__ == expected
    x = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x).logits, hf(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-4

    ckpt = import_hf(tmp_path / "hf", tmp_path / "run")
    assert json.loads((ckpt / "config.json").read_text())["n_kv_heads"] == cfg.n_kv_heads
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
    back = Z2allForCausalLM.from_pretrained(tmp_path / "run")
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    for field in ("hidden_dim", "n_layers", "n_heads", "n_kv_heads", "intermediate_size", "tie_word_embeddings",
                  "attention_bias", "rope_theta", "rope_scaling_type", "rope_scaling_factor", "max_seq_len"):
        assert getattr(back.config, field) == getattr(cfg, field), field


def test_import_rejects_unsupported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        import_hf(tmp_path, tmp_path / "run")


def _successor_model(tok, chain: list[int], eot: int) -> Z2allForCausalLM:
    """A model whose greedy next token after chain[i] is chain[i + 1], whatever came before: attention and MLP
    write nothing (o_proj, down_proj = 0), so the last hidden state is the token's own normed embedding, and each
    successor's lm_head row is the embedding of the token before it."""
    cfg = Z2allConfig(vocab_size=tok.model_vocab_size, hidden_dim=64, n_layers=1, n_heads=4, n_kv_heads=2,
                      intermediate_size=32, max_seq_len=32).with_special_ids(tok.bos_id, tok.eos_id, tok.pad_id, eot)
    torch.manual_seed(0)
    model = Z2allForCausalLM(cfg).eval()
    with torch.no_grad():
        model.layers[0].attn.o_proj.weight.zero_()
        model.layers[0].mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for a, b in zip(chain, chain[1:]):
            e = model.embed_tokens.weight[a]
            model.lm_head.weight[b] = 20 * e / e.norm()
    return model


@pytest.mark.parametrize("recorded", [True, False])  # the config's end-of-turn id, or an older checkpoint's fallback
def test_export_stops_generate_at_im_end(tmp_path, recorded):
    from tests.unit.dataset.sft_fixtures import tiny_tokenizer

    tok, tok_dir = tiny_tokenizer(tmp_path / "tok")
    a, b, c = tok.encode("def")[0], tok.encode(" return")[0], tok.encode(" x")[0]
    model = _successor_model(tok, [a, b, tok.im_end_id, c, a], tok.im_end_id if recorded else -1)
    model.save_pretrained(tmp_path / "saved")
    export_main([f"--ckpt={tmp_path / 'saved'}", f"--out_dir={tmp_path / 'hf'}", f"--tokenizer_dir={tok_dir}"])
    for name in ("config.json", "generation_config.json"):
        assert json.loads((tmp_path / "hf" / name).read_text())["eos_token_id"] == [tok.im_end_id, tok.eos_id], name

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.generation_config.eos_token_id == [tok.im_end_id, tok.eos_id]
    prompt = torch.tensor([[a]])
    with torch.no_grad():
        out = hf.generate(prompt, max_new_tokens=6, do_sample=False)
        past = hf.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_id)
    assert out[0].tolist() == [a, b, tok.im_end_id]  # ends with the turn
    assert past[0, :5].tolist() == [a, b, tok.im_end_id, c, a]  # what the EOS alone let it do: run past it
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf").decode(out[0, 1:]) == tok.decode([b]) + "<|im_end|>"
    back = import_hf(tmp_path / "hf", tmp_path / "run")
    saved = json.loads((back / "config.json").read_text())
    assert (saved["eos_token_id"], saved["eot_token_id"]) == (tok.eos_id, tok.im_end_id)
