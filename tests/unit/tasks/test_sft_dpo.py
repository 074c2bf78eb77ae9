"""SFT and DPO through train.py's own wiring: the objective does not depend on accumulation or packing, DPO's
reward accuracy rises on a learnable toy set, the reference stays frozen, and the demo-style commands work."""
import json

import numpy as np
import pytest
import torch

import configurator
import train
from parallel.dist import init_distributed
from tests.support.finetune import make_finetune
from tests.support.launch import run_dist


def first_step_grads(argv: list[str], ctx) -> np.ndarray:
    """The reduced grads of the first optimizer step of the run `argv` (captured just before the update)."""
    cfg = configurator.build_config(argv)
    configurator.check_world_size(cfg, ctx.world_size)
    trainer = train.start_run(cfg, ctx, train.build_run(cfg, ctx))
    seen = []
    real_step = trainer.optimizer.step

    def step():
        seen.append(torch.cat([b.grad_data.detach().clone() for b in trainer.ddp.buffers]).numpy())
        return real_step()

    trainer.optimizer.step = step  # test-only: observe the grads the optimizer is handed
    trainer.train_step()
    trainer.logger.close()
    return seen[0]


def _grads_on(ctx, argv):
    return first_step_grads(argv, ctx)


def _argv(ft, out, task, *extra):
    return [ft["config"], f"--task_type={task}", f"--init_from={ft['init']}", f"--data_dir={ft[task]}",
            f"--out_dir={out}", *extra]


def test_sft_grads_do_not_depend_on_accumulation_or_world_size(tmp_path):
    """1 x 8 rows, 4 x 2 rows and 2 gloo ranks x 2 x 2 rows: the same packed rows, the same label-token mean."""
    ft = make_finetune(tmp_path)
    ctx = init_distributed("cpu")
    one = first_step_grads(_argv(ft, tmp_path / "a", "sft", "--batch_size=8", "--gradient_accumulation_steps=1"), ctx)
    four = first_step_grads(_argv(ft, tmp_path / "b", "sft", "--batch_size=2", "--gradient_accumulation_steps=4"),
                            ctx)
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-7)
    two = run_dist(_grads_on, 2, _argv(ft, tmp_path / "c", "sft", "--batch_size=2",
                                              "--gradient_accumulation_steps=4"), timeout_s=120)
    for g in two:
        np.testing.assert_allclose(g, one, rtol=1e-5, atol=1e-7)
    unpacked = first_step_grads(_argv(ft, tmp_path / "d", "sft", "--batch_size=8", "--pack_sequences=false"), ctx)
    assert np.abs(unpacked).sum() > 0  # another batch (one conversation per row), a real gradient


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("precompute", [False, True])
def test_dpo_reward_accuracy_rises_and_the_reference_stays_frozen(tmp_path, precompute, capsys):
    ft = make_finetune(tmp_path)
    out = tmp_path / f"dpo{int(precompute)}"
    argv = _argv(ft, out, "dpo", "--max_iters=24", "--eval_interval=12", "--learning_rate=1e-2",
                 "--dpo_beta=0.5", f"--precompute_ref_logps={precompute}")
    assert train.main(argv) == 0
    log_lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("iter 24/24 | loss")]
    assert log_lines and " | accuracy " in log_lines[0] and " | margin " in log_lines[0], log_lines  # on the terminal
    valid = [r for r in _records(out) if "valid_rewards/accuracy" in r]
    assert valid[-1]["valid_rewards/accuracy"] > 0.9 and valid[-1]["valid_loss"] < valid[0]["valid_loss"]
    train_acc = [r["rewards/accuracy"] for r in _records(out) if "rewards/accuracy" in r]
    assert np.mean(train_acc[-6:]) > np.mean(train_acc[:3])
    saved = (out / "ckpt" / "step_000000024" / "model.safetensors").stat().st_size
    init = (tmp_path / "ft" / "init" / "ckpt" / "step_000000000" / "model.safetensors").stat().st_size
    assert saved == init  # the checkpoint holds the policy only, not the reference
    if precompute:
        tables = list((tmp_path / "ft").glob("dpo.jsonl.z2all-dpo-96/ref_logps-*.npy"))
        assert len(tables) == 1 and np.load(tables[0]).shape == (96, 2)


def test_sft_sample_replies_to_a_held_out_prompt(tmp_path, capsys):
    ft = make_finetune(tmp_path)
    assert train.main(_argv(ft, tmp_path / "s", "sft", "--max_iters=2")) == 0
    out = capsys.readouterr().out
    assert "user: Say the colour" in out and "\nassistant:" in out
    assert "\nchat template: z2all ChatML\n" in out
    rec = _records(tmp_path / "s")
    assert any("valid_loss" in r for r in rec)


def test_dpo_needs_a_reference(tmp_path, capsys):
    ft = make_finetune(tmp_path)
    argv = [ft["config"], "--task_type=dpo", f"--data_dir={ft['dpo']}", f"--out_dir={tmp_path / 'x'}",
            f"--tokenizer_dir={ft['tokenizer']}", "--vocab_size=320"]
    assert train.main(argv) == 2
    assert "needs a reference model" in capsys.readouterr().err
