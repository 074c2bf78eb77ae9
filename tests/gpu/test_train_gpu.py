"""A short training run of a tiny model on the GPU follows the CPU run's loss curve (skipped without CUDA)."""
import json
import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

import train  # noqa: E402
from tests.support.runs import make_run  # noqa: E402

COMMON = ["--max_iters=20", "--eval_interval=0", "--save_interval=20", "--attention_dropout=0",
          "--residual_dropout=0", "--hidden_dim=64", "--n_heads=4", "--n_kv_heads=2", "--max_seq_len=32"]


def losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return np.array([json.loads(line)["loss"] for line in f if '"loss"' in line])


@pytest.mark.parametrize("dtype,rtol", [("float32", 2e-3), ("bfloat16", 3e-2)])
def test_gpu_loss_curve_matches_cpu(tmp_path, dtype, rtol):
    cfg_file, args, _ = make_run(tmp_path, "cpu")
    _, gpu_args, _ = make_run(tmp_path, "gpu")
    assert train.main([cfg_file, *args, *COMMON, "--device=cpu", "--dtype=float32"]) == 0
    assert train.main([cfg_file, *gpu_args, *COMMON, "--device=cuda", f"--dtype={dtype}"]) == 0
    cpu, gpu = losses(tmp_path / "cpu"), losses(tmp_path / "gpu")
    assert len(cpu) == len(gpu) == 20
    assert gpu[-1] < gpu[0] - 0.5  # it learns on the GPU too
    np.testing.assert_allclose(gpu, cpu, rtol=rtol)


def test_gpu_zero1_overlap_matches_plain(tmp_path):
    """One rank: ZeRO-1 with overlapped param gather gives the same losses as the plain optimizer (NCCL-free path)."""
    cfg_file, a_args, _ = make_run(tmp_path, "plain")
    _, b_args, _ = make_run(tmp_path, "zero")
    base = [cfg_file, *COMMON, "--device=cuda", "--dtype=bfloat16"]
    assert train.main([*base, *a_args]) == 0
    assert train.main([*base, *b_args, "--use_distributed_optimizer", "--overlap_param_gather"]) == 0
    np.testing.assert_allclose(losses(tmp_path / "zero"), losses(tmp_path / "plain"), rtol=1e-6)
