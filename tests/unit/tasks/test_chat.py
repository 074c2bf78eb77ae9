"""tasks.chat on piped stdin with a tiny random model; model.generate's per-token callback."""
import io
import os
import subprocess
import sys

import pytest
import torch

from model import Z2allConfig, Z2allForCausalLM
from model.generate import generate
from tasks import chat
from tests.conftest import ROOT
from tests.unit.dataset.sft_fixtures import tiny_tokenizer
from tokenizer import render_generation_prompt


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A saved tiny random model with the run's tokenizer/ beside it."""
    d = tmp_path_factory.mktemp("run")
    tok, _ = tiny_tokenizer(d / "tokenizer")
    torch.manual_seed(0)
    cfg = Z2allConfig(vocab_size=tok.model_vocab_size, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                      max_seq_len=128, multiple_of=32)
    Z2allForCausalLM(cfg).save_pretrained(d)
    return tok, str(d)


def test_on_token_streams_every_sampled_id(run_dir):
    tok, d = run_dir
    model = Z2allForCausalLM.from_pretrained(d)
    prompt = render_generation_prompt(tok, [{"role": "user", "content": "hi"}])
    seen = []
    out = generate(model, prompt, 6, temperature=0.0, on_token=lambda nxt: seen.append(int(nxt[0])))
    assert seen == out[0, len(prompt):].tolist() and len(seen) == 6


def test_chat_loop_history_reset_and_streaming(run_dir):
    tok, d = run_dir
    stdout = io.StringIO()
    chat.main([d, "--temperature=0", "--max_new_tokens=5", "--system=Be brief."],
                        stdin=io.StringIO("hello\n\n/reset\nhi again\n/quit\nnever read\n"), stdout=stdout)
    text = stdout.getvalue()
    assert text.count("bot> ") == 2 and "(history cleared)" in text
    # the streamed reply is the greedy continuation of the rendered prompt, cut at <|im_end|>
    model = Z2allForCausalLM.from_pretrained(d)
    prompt = render_generation_prompt(tok, [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "hello"}])
    ids = generate(model, prompt, 5, temperature=0.0, eos_id=tok.im_end_id)[0, len(prompt):].tolist()
    ids = ids[:ids.index(tok.im_end_id)] if tok.im_end_id in ids else ids
    first = text.split("bot> ")[1].split("\nyou> ")[0]
    assert first == tok.decode(ids, skip_special_tokens=True)


def test_fit_prompt_drops_oldest_turns(run_dir):
    tok, _ = run_dir
    history = [{"role": "system", "content": "s"}]
    for i in range(6):
        history += [{"role": "user", "content": f"question {i} " * 4}, {"role": "assistant", "content": "answer " * 4}]
    history.append({"role": "user", "content": "last"})
    ids = chat.fit_prompt(tok, history, max_len=80, min_new=8)
    assert ids is not None and len(ids) + 8 <= 80
    assert tok.decode(ids).startswith("<|beginoftext|><|im_start|>system\ns<|im_end|>") and "last" in tok.decode(ids)
    assert "question 0" not in tok.decode(ids)
    assert chat.fit_prompt(tok, [{"role": "user", "content": "x " * 200}], max_len=80, min_new=1) is None


def test_cli_on_piped_stdin_exits_at_end_of_input(run_dir):
    _, d = run_dir
    proc = subprocess.run([sys.executable, "-m", "tasks.chat", d, "--temperature=0", "--max_new_tokens=3"],
                          input="hello\n", capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("bot> ") == 1 and proc.stdout.rstrip().endswith("you>")
    with pytest.raises(ValueError, match="tokenizer_dir"):
        chat.find_tokenizer(os.path.join(os.path.dirname(d), "no_run", "ckpt", "step_1"))


def test_chat_with_an_hf_export(run_dir, tmp_path):
    from model.hf.export_hf import export_hf

    _, d = run_dir
    out = export_hf(d, tmp_path / "hf")
    stdout = io.StringIO()
    chat.main([str(out), "--temperature=0", "--max_new_tokens=3"], stdin=io.StringIO("hi\n"), stdout=stdout)
    direct = io.StringIO()
    chat.main([d, "--temperature=0", "--max_new_tokens=3"], stdin=io.StringIO("hi\n"), stdout=direct)
    assert stdout.getvalue().count("bot> ") == 1
    assert stdout.getvalue().split("bot> ")[1] == direct.getvalue().split("bot> ")[1]  # same weights, same reply
