"""bench/fp8_numerics.py on a tiny shape: the loss lines, the gap summary and one line per GEMM and choice."""
import json

import torch

import bench.fp8_numerics as numerics


def test_tiny_run_prints_losses_and_every_choice(capsys):
    assert numerics.main(["--steps=2", "--hidden_dim=32", "--n_layers=1", "--seq=16", "--batch=2",
                          "--vocab_size=64", "--log_every=1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["setup"]["steps"] == 2
    steps = [r for r in lines if "step" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["loss_fp8"] > 0 for r in steps)
    assert any(r.get("summary") == "loss" for r in lines)
    errs = {(r["gemm"], r["choice"]): r for r in lines if "choice" in r}
    assert len(errs) == 10 and all(r["layers"] == 4 for r in errs.values())
    # e4m3's extra mantissa bit shows: e5m2 rounds twice as coarsely
    assert errs[("dgrad", "e5m2_rowwise")]["mean_rel_err"] > errs[("dgrad", "e4m3_rowwise")]["mean_rel_err"]
    assert errs[("wgrad", "bf16")]["mean_rel_err"] < errs[("wgrad", "bf16_of_fp8_x")]["mean_rel_err"]


def test_fake_quant_uses_power_of_two_scales_per_slice():
    t = torch.tensor([[1.0, 448.0], [3.0, 0.5]])
    q = numerics.fake_quant(t, "e4m3", 1)
    assert torch.equal(q, t)  # every value here is representable once scaled by its row's power of two
    tensorwise = numerics.fake_quant(torch.tensor([1e-6, 448.0]), "e4m3", None)
    assert tensorwise[0] == 0 and tensorwise[1] == 448.0  # one scale for all: the small value falls off e4m3
