"""Mistakes a new user makes, each answered in one line that names the fix (issue 24, part 5)."""
import numpy as np
import pytest

import configurator
import train
from dataset.format import write_bin
from tests.support.runs import VOCAB
from utils import exit_codes as ec


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_key_without_dashes_is_not_taken_for_a_config_file(capsys):
    assert train.main(["batch_size=4"]) == ec.USER_ERROR
    assert _one_error_line(capsys) == "error: 'batch_size=4' is not a config file: keys take two dashes, --batch_size=4"
    with pytest.raises(ValueError, match="does not exist"):  # a path with '=' that is not a key stays a path
        configurator.build_config(["weird=name.py"])


def test_finetuning_without_a_model_to_start_from_says_init_from(capsys, tmp_path):
    for task in ("sft", "dpo"):
        assert train.main([f"--task_type={task}", f"--out_dir={tmp_path / task}"]) == ec.USER_ERROR
        line = _one_error_line(capsys)
        assert f"--task_type={task} fine-tunes a trained model: add --init_from=RUN" in line, line
        assert not (tmp_path / task).exists()
    # a shape of the user's is a deliberate from-scratch run, which the config accepts
    cfg = configurator.build_config(["--task_type=sft", "--hidden_dim=64", "--n_heads=4", "--n_kv_heads=2"])
    assert cfg.train.task_type == "sft" and cfg.model.hidden_dim == 64


def test_sft_on_pretraining_shards_says_what_sft_needs(capsys, tmp_path):
    shards = tmp_path / "bin"
    shards.mkdir()
    write_bin(shards / "shard_000.bin", np.arange(100, dtype=np.uint16) % VOCAB, VOCAB, num_docs=1)
    args = ["--task_type=sft", "--hidden_dim=32", "--n_heads=2", "--n_kv_heads=1", "--n_layers=1",
            "--vocab_size=128", "--max_seq_len=32", f"--data_dir={shards}", f"--out_dir={tmp_path / 'out'}",
            "--device=cpu"]
    assert train.main(args) == ec.USER_ERROR
    line = _one_error_line(capsys)
    assert f"--data_dir={shards} holds pretraining shards" in line and "needs conversation records" in line, line
    assert "pretokenize_sft --task=sft" in line and not (tmp_path / "out").exists()
