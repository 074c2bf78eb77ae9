"""SFT (packed rows: flash-attn varlen when installed, else FlexAttention; and the masked SDPA path) and DPO (live and precomputed
reference) run on CUDA in bf16 through train.py, and follow their CPU fp32 runs (skipped without CUDA)."""
import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

import train  # noqa: E402
from tests.support.finetune import make_finetune  # noqa: E402


def _losses(out):
    return np.array([json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                     if '"loss"' in line])


@pytest.mark.parametrize("task,extra,cuda_extra", [
    ("sft", [], []), ("sft", [], ["--attn_impl=sdpa"]), ("dpo", [], []), ("dpo", [], ["--attn_impl=flex"]),
    ("dpo", ["--precompute_ref_logps"], []),
])
def test_finetuning_on_cuda_follows_the_cpu_run(tmp_path, task, extra, cuda_extra):
    """cuda_extra: flags for the CUDA run only (the CPU reference keeps its default attention path)."""
    ft = make_finetune(tmp_path)
    runs = {}
    for device, dtype in (("cpu", "float32"), ("cuda", "bfloat16")):
        out = tmp_path / f"{task}_{device}"
        argv = [ft["config"], f"--task_type={task}", f"--init_from={ft['init']}", f"--data_dir={ft[task]}",
                f"--out_dir={out}", f"--device={device}", f"--dtype={dtype}", "--max_iters=6", *extra,
                *(cuda_extra if device == "cuda" else [])]
        assert train.main(argv) == 0
        runs[device] = _losses(out)
    assert np.isfinite(runs["cuda"]).all() and len(runs["cuda"]) == len(runs["cpu"]) == 6
    np.testing.assert_allclose(runs["cuda"], runs["cpu"], rtol=5e-2, atol=2e-2)
