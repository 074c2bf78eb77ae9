"""train.py --init_from=HF_DIR through train.py's own wiring: SFT, DPO and pretraining of Hugging Face models of
several shapes with their own tokenizer and chat template (the recipe's settings, the model's shape), the loss
of step 0 equal to transformers' on the same batch, a user's shape the weights cannot take refused in one line,
and the HF dir only read."""
import json

import pytest
import torch

import configurator
import train
from parallel.dist import init_distributed
from tests.support.hf_models import make_model, write_records

transformers = pytest.importorskip("transformers")
FAST = ["--device=cpu", "--max_iters=2", "--batch_size=2", "--eval_interval=2", "--eval_iters=1",
        "--save_interval=2", "--log_interval=1", "--tensorboard=false", "--sample_tokens=4"]
TURN_END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}
STYLE_NAME = {"chatml": "ChatML style", "llama3": "Llama-3 style"}


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_sft_step0_loss_equals_transformers(tmp_path):
    hf_dir = make_model(tmp_path / "hf", "llama_gqa", style="llama3")
    argv = ["--task_type=sft", f"--init_from={hf_dir}", f"--data_dir={write_records(tmp_path / 'sft.jsonl')}",
            f"--out_dir={tmp_path / 'run'}", "--pack_sequences=false", "--residual_dropout=0", *FAST]
    cfg = configurator.build_config(argv)
    r = train.build_run(cfg, init_distributed("cpu"))
    batch = next(r.task.stream)
    with torch.no_grad():
        ours = r.task.loss(r.model, batch)
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        logits = hf(batch.input_ids, position_ids=batch.position_ids).logits
        theirs = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="sum")
    assert int(ours.num_tokens) == int((batch.targets != -100).sum()) > 0
    assert abs(ours.loss.item() - theirs.item()) <= 1e-4 * abs(theirs.item())


@pytest.mark.parametrize("shape,style", [("llama_gqa", "llama3"), ("qwen2_bias", "chatml"), ("llama_tied", "chatml"),
                                         ("mistral", "llama3")])
def test_sft_of_hf_models_of_several_shapes(tmp_path, capsys, shape, style):
    hf_dir = make_model(tmp_path / "hf", shape, style=style)
    before = _snapshot(hf_dir)
    out = tmp_path / "run"
    assert train.main(["--task_type=sft", f"--init_from={hf_dir}", f"--data_dir={write_records(tmp_path / 'r.jsonl')}",
                       f"--out_dir={out}", *FAST]) == 0
    text = capsys.readouterr().out
    assert f"chat template: the tokenizer's own ({STYLE_NAME[style]}, from {hf_dir / 'chat_template.jinja'})" in text
    assert f"model shape from --init_from={hf_dir}\n" in text
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    saved = json.loads((out / "exp_config.json").read_text())["config"]
    assert saved["model"]["hidden_dim"] == hf_cfg["hidden_size"] and saved["model"]["n_layers"] == hf_cfg["num_hidden_layers"]
    assert saved["optim"]["learning_rate"] == 5e-4  # the SFT recipe's, with the model's shape
    assert {p.name for p in (out / "tokenizer").iterdir()} == {"tokenizer.json", "tokenizer_config.json",
                                                              "chat_template.jinja"}
    assert _snapshot(hf_dir) == before
    if shape == "llama_gqa":  # the run exports for chat serving: generation stops at the template's end of turn
        from model.hf.export_hf import export_hf

        export_hf(out, tmp_path / "export")
        fast = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
        gen = json.loads((tmp_path / "export" / "generation_config.json").read_text())
        assert gen["eos_token_id"] == [fast.convert_tokens_to_ids(TURN_END[style]), fast.eos_token_id]


def test_dpo_of_an_hf_model(tmp_path, capsys):
    hf_dir = make_model(tmp_path / "hf", "qwen2_bias", style="chatml")
    pairs = [{"prompt": f"Say the colour {w}.", "chosen": f"{w} {w}", "rejected": "no"} for w in ("red", "blue") * 8]
    (tmp_path / "dpo.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert train.main(["--task_type=dpo", f"--init_from={hf_dir}", f"--data_dir={tmp_path / 'dpo.jsonl'}",
                       f"--out_dir={tmp_path / 'run'}", "--valid_ratio=0.25", *FAST]) == 0
    assert "chat template: the tokenizer's own (ChatML style" in capsys.readouterr().out


def test_a_shape_the_weights_cannot_take_is_refused(tmp_path, capsys):
    hf_dir = make_model(tmp_path / "hf", "llama_gqa", style="llama3")
    argv = ["--task_type=sft", f"--init_from={hf_dir}", f"--data_dir={write_records(tmp_path / 'r.jsonl')}",
            f"--out_dir={tmp_path / 'run'}", "--hidden_dim=128", *FAST]
    capsys.readouterr()  # transformers' save progress bar
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hidden_dim: checkpoint 64 vs now 128" in err[0] and "--hidden_dim=64" in err[0], err
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    assert train.main([f"--init_from={tmp_path / 'gpt2'}", f"--out_dir={tmp_path / 'run2'}", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_type 'gpt2' is not supported; expected one of llama, qwen2, mistral" in err[0]


def test_an_hf_model_without_its_tokenizer_is_refused(tmp_path, capsys):
    hf_dir = make_model(tmp_path / "hf", "llama_gqa", tokenizer=False)
    capsys.readouterr()
    assert train.main(["--task_type=sft", f"--init_from={hf_dir}", f"--out_dir={tmp_path / 'run'}", *FAST]) == 2
    assert "a Hugging Face model without its tokenizer" in capsys.readouterr().err


def test_pretraining_an_hf_model_on_shards_of_its_tokenizer(tmp_path, capsys):
    from data_preprocess.pretokenize import pretokenize
    from tests.support.hf_models import CORPUS

    hf_dir = make_model(tmp_path / "hf", "mistral", style="llama3")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("\n\n".join(CORPUS * 8))
    pretokenize(str(tmp_path / "text"), str(hf_dir), str(tmp_path / "bin"), progress=False)
    argv = [f"--init_from={hf_dir}", f"--out_dir={tmp_path / 'run'}", "--max_seq_len=32", *FAST]
    assert train.main([*argv, f"--data_dir={tmp_path / 'bin'}"]) == 0
    assert json.loads((tmp_path / "run" / "exp_config.json").read_text())["config"]["model"]["hidden_dim"] == 32
    capsys.readouterr()
    assert train.main([*argv[:1], f"--out_dir={tmp_path / 'run2'}", *FAST]) == 2  # no --data_dir: the demo corpus
    assert "pretokenize your text with" in capsys.readouterr().err
    other = make_model(tmp_path / "other", "mistral", style="chatml")
    pretokenize(str(tmp_path / "text"), str(other), str(tmp_path / "other_bin"), progress=False)
    assert train.main([*argv[:1], f"--data_dir={tmp_path / 'other_bin'}", f"--out_dir={tmp_path / 'run3'}", *FAST]) == 2
    assert f"not with the one of --init_from={hf_dir}" in capsys.readouterr().err



def test_the_command_import_hf_prints_fine_tunes_the_imported_shape(tmp_path, capsys):
    from model.hf.import_hf import main as import_main

    hf_dir = make_model(tmp_path / "hf", "llama_tied", style="chatml")
    capsys.readouterr()
    import_main([f"--hf_dir={hf_dir}", f"--out_dir={tmp_path / 'imported'}"])
    command = capsys.readouterr().out.strip().split("start from it with train.py ", 1)[1]
    assert command == f"--init_from={tmp_path / 'imported'}"
    assert train.main(["--task_type=sft", command, f"--data_dir={write_records(tmp_path / 'r.jsonl')}",
                       f"--out_dir={tmp_path / 'run'}", *FAST]) == 0
    text = capsys.readouterr().out
    assert f"chat template: the tokenizer's own (ChatML style, from {tmp_path / 'imported' / 'tokenizer'}" in text
    assert json.loads((tmp_path / "run" / "exp_config.json").read_text())["config"]["model"]["hidden_dim"] == 48


def test_a_set_pretokenized_for_another_tokenizer_is_refused(tmp_path, capsys):
    from data_preprocess.pretokenize_sft import ensure_pretokenized

    hf_dir = make_model(tmp_path / "hf", "llama_gqa", style="llama3")
    other = make_model(tmp_path / "other", "llama_gqa", style="chatml")
    records = write_records(tmp_path / "r.jsonl")
    mine = ensure_pretokenized(records, str(hf_dir), str(tmp_path / "mine"), max_seq_len=128, progress=False)
    theirs = ensure_pretokenized(records, str(other), str(tmp_path / "theirs"), max_seq_len=128, progress=False)
    argv = ["--task_type=sft", f"--init_from={hf_dir}", *FAST]
    capsys.readouterr()
    assert train.main([*argv, f"--data_dir={theirs}", f"--out_dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err
    assert f"--data_dir={theirs} was pretokenized with another tokenizer or chat template than the model's" in err
    assert train.main([*argv, f"--data_dir={mine}", f"--out_dir={tmp_path / 'b'}"]) == 0
