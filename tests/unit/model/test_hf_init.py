"""Hugging Face Llama / Qwen2 / Mistral model dirs read as z2all weights (what --init_from=HF_DIR loads): the
architecture maps, our logits and loss equal transformers' on the same batch for several shapes, sharded and .bin
weights load, what z2all cannot compute is refused in one line, and the directory is only read."""
import json
import os
import pickle

import pytest
import torch

from model import Z2allForCausalLM
from model.hf.import_hf import is_hf_model_dir
from model.weights import read_config, read_pretrained, weight_files
from tests.support.hf_models import SHAPES, make_model

transformers = pytest.importorskip("transformers")


def _snapshot(d):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_our_logits_and_loss_equal_transformers(tmp_path, shape):
    hf_dir = make_model(tmp_path / "hf", shape, tokenizer=False)
    before = _snapshot(hf_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    cfg, where = read_config(hf_dir)
    assert is_hf_model_dir(hf_dir) and where == hf_dir
    c = hf.config
    assert (cfg.vocab_size, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.intermediate_size) == (
        c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
        c.intermediate_size)
    assert cfg.tie_word_embeddings == bool(c.tie_word_embeddings) and cfg.attention_bias == (shape == "qwen2_bias")
    assert (cfg.max_seq_len, cfg.rope_theta, cfg.rms_norm_eps) == (128, 500.0, 1e-5)
    model = Z2allForCausalLM.from_pretrained(hf_dir).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    labels = x.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        theirs = hf(x, labels=labels)
        ours_logits = model(x).logits
        ours_loss = model(x, labels=labels).loss
    assert (ours_logits - theirs.logits).abs().max().item() <= 1e-4
    assert abs(ours_loss.item() - theirs.loss.item()) <= 1e-5
    assert _snapshot(hf_dir) == before  # read, never written


def test_sharded_and_bin_weights_load(tmp_path):
    hf_dir = make_model(tmp_path / "hf", "llama_gqa", tokenizer=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    expected = read_pretrained(hf_dir)[1]
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert len(weight_files(tmp_path / "sharded")) > 1
    got = read_pretrained(tmp_path / "sharded")[1]
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    got = read_pretrained(tmp_path / "bin")[1]
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # a pickle that holds an object is refused by weights_only=True, never executed
    torch.save({"x": _Evil()}, tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="holds more than tensors.*weights_only=True"):
        read_pretrained(tmp_path / "bin")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _config(tmp_path, **changes) -> str:
    hf_dir = make_model(tmp_path / "hf", "llama_gqa", tokenizer=False)
    raw = json.loads((hf_dir / "config.json").read_text())
    raw.update(changes)
    (hf_dir / "config.json").write_text(json.dumps(raw))
    return hf_dir


@pytest.mark.parametrize("changes,match", [
    (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]),
     "model_type 'gpt2' is not supported; expected one of llama, qwen2, mistral"),
    (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0}),
     "RoPE type 'llama3' is not one z2all implements"),
    (dict(model_type="mistral", sliding_window=16), r"sliding-window attention \(sliding_window=16 < "),
    (dict(model_type="qwen2", use_sliding_window=True, sliding_window=32, max_window_layers=1),
     "sliding-window attention"),
    (dict(hidden_act="gelu"), "SwiGLU MLPs without bias"),
    (dict(head_dim=8), "head_dim=8"),
])
def test_what_z2all_cannot_compute_is_refused_in_one_line(tmp_path, changes, match):
    hf_dir = _config(tmp_path, **changes)
    with pytest.raises(ValueError, match=match) as e:
        read_config(hf_dir)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"cannot load the Hugging Face model {hf_dir}: ")


def test_a_window_that_never_masks_is_full_attention(tmp_path):
    hf_dir = _config(tmp_path, model_type="mistral", sliding_window=4096)  # >= max_position_embeddings 128
    assert read_config(hf_dir)[0].max_seq_len == 128


def test_missing_tensors_name_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_dir = make_model(tmp_path / "hf", "llama_gqa", tokenizer=False)
    state = load_file(hf_dir / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, hf_dir / "model.safetensors")
    with pytest.raises(ValueError, match="the weights lack the tensor model.layers.1.mlp.up_proj.weight that"):
        read_pretrained(hf_dir)
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="has none of model.safetensors"):
        read_pretrained(hf_dir)


def test_stop_ids_of_an_hf_config(tmp_path):
    hf_dir = _config(tmp_path, eos_token_id=[7, 2], bos_token_id=1, pad_token_id=None)
    cfg = read_config(hf_dir)[0]
    assert (cfg.eos_token_id, cfg.eot_token_id, cfg.bos_token_id, cfg.pad_token_id) == (2, 7, 1, 0)
    assert not is_hf_model_dir(tmp_path)  # no config.json
    pickle.dumps(cfg)  # a plain frozen dataclass still
