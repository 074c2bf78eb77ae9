"""`python train.py --task_type=sft --init_from=HF_DIR` as a user runs it (a real process): the README's command
fine-tunes a Hugging Face model of its own shape with its own tokenizer and template, and a flag the weights cannot
take, or a model type z2all does not have, ends in one line with exit status 2."""
import json

import pytest

from tests.support.hf_models import make_model, write_records
from tests.support.runs import run_cli

pytest.importorskip("transformers")
FAST = ["--device=cpu", "--max_iters=2", "--batch_size=2", "--eval_interval=2", "--eval_iters=1", "--save_interval=2",
        "--tensorboard=false", "--sample_tokens=4"]


@pytest.mark.slow
def test_sft_from_an_hf_dir_and_its_refusals(tmp_path):
    hf_dir = make_model(tmp_path / "hf", "qwen2_bias", style="llama3")
    records = write_records(tmp_path / "sft.jsonl")
    proc = run_cli(["--task_type=sft", f"--init_from={hf_dir}", f"--data_dir={records}", f"--out_dir={tmp_path / 'run'}",
                    *FAST], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"chat template: the tokenizer's own (Llama-3 style, from {hf_dir / 'chat_template.jinja'})" in proc.stdout
    assert f"model shape from --init_from={hf_dir}\n" in proc.stdout
    assert json.loads((tmp_path / "run" / "exp_config.json").read_text())["config"]["model"]["attention_bias"] is True

    refused = run_cli(["--task_type=sft", f"--init_from={hf_dir}", f"--data_dir={records}", "--n_heads=4",
                       f"--out_dir={tmp_path / 'run2'}", *FAST], timeout=120)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "n_heads: checkpoint 2 vs now 4" in lines[0], refused.stderr
    (tmp_path / "phi").mkdir()
    (tmp_path / "phi" / "config.json").write_text(json.dumps({"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}))
    refused = run_cli([f"--init_from={tmp_path / 'phi'}", f"--out_dir={tmp_path / 'run3'}", *FAST], timeout=120)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "model_type 'phi3' is not supported; expected one of llama, qwen2, mistral" in lines[0]
