"""The Z2all model under ZeRO-1 with the param gather overlapped with the next forward, on 2 gloo ranks, against one
process taking the same batch as 2 micro-batches: the same losses and weights, in bf16 and with --fp8 (FP8 GEMMs
emulated on the CPU), where on every step both ranks quantize the same gathered weights.

The overlap makes each module's forward pre-hook wait for its own weights, so a weight read outside its module's
call would use the other ranks' shards of the step before (the loss read lm_head.weight so; the losses drifted from
the third step on). tests/unit/model/test_param_reads.py checks the contract itself; this is the run it protects.

With FP8, row-wise scales make the two runs comparable: each token's rows are quantized alone, so splitting the batch over
ranks or micro-batches changes no code, and the 1/2 of the averaging is a power of two that the scales absorb.
"""
import numpy as np
import pytest
import torch

from model import Z2allConfig, Z2allForCausalLM
from optimizer import build_optimizer
from optimizer.config import OptimizerConfig
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from parallel.dist import DistContext
from tests.support.launch import run_dist

SHAPE = dict(vocab_size=96, hidden_dim=32, n_layers=2, n_heads=2, n_kv_heads=1, intermediate_size=48,
             max_seq_len=16)
STEPS, ROWS = 4, 4


def _train(ctx, zero: bool, fp8: str) -> dict:
    """STEPS optimizer steps on the full batch split into 2 parts (ranks, or micro-batches on one process)."""
    torch.manual_seed(0)
    model = Z2allForCausalLM(Z2allConfig(**SHAPE, fp8=fp8))
    ddp = DistributedDataParallel(model, DDPConfig(bucket_size=2000, use_distributed_optimizer=zero,
                                                   comm_hook="reduce_scatter" if zero else "allreduce"), ctx)
    opt = build_optimizer(OptimizerConfig(warmup_iters=0, learning_rate=1e-2, overlap_param_gather=zero), ddp,
                          torch.float32, ctx)
    parts = 2 // ctx.world_size
    if parts > 1:
        ddp.set_grad_scale(1.0 / 2)
    weight = model.layers[1].mlp.down_proj.weight
    losses, codes = [], []
    for step in range(STEPS):
        data = torch.randint(0, 96, (2 * ROWS, 17), generator=torch.Generator().manual_seed(step))
        ddp.zero_grad_buffer()
        for m in range(parts):
            part = data[(ctx.rank * parts + m) * ROWS:(ctx.rank * parts + m + 1) * ROWS]
            if m < parts - 1:
                with ddp.no_sync():
                    loss = ddp(part[:, :-1], targets=part[:, 1:]).loss
                    loss.backward()
            else:
                loss = ddp(part[:, :-1], targets=part[:, 1:]).loss
                loss.backward()
            losses.append(loss.item())
        ddp.finish_grad_sync()
        if model.fp8_weights is not None:
            codes.append(model.fp8_weights.get(weight).data.view(torch.uint8).numpy().copy())
        opt.step()
    ddp.finish_param_sync()
    # numpy, not tensors: a tensor sent back from a child process lives in shared memory that dies with it
    return {"losses": losses, "codes": codes, "params": {n: p.detach().numpy().copy() for n, p in
                                                         model.named_parameters()}}


def _zero_case(ctx, fp8):
    return _train(ctx, zero=True, fp8=fp8)


@pytest.mark.parametrize("fp8", ["off", "rowwise"])
def test_zero1_overlapped_gather_on_two_ranks_matches_one_process(fp8):
    ranks = run_dist(_zero_case, 2, fp8, timeout_s=180)
    ref = _train(DistContext(0, 1, 0, torch.device("cpu"), None, None), zero=False, fp8=fp8)
    for step in range(len(ref["codes"])):
        # the copies each rank made after the gather are the single process's copies of the same weights
        np.testing.assert_array_equal(ranks[0]["codes"][step], ranks[1]["codes"][step], err_msg=str(step))
        np.testing.assert_array_equal(ranks[0]["codes"][step], ref["codes"][step], err_msg=str(step))
        if step:  # made again after each step, from the updated (gathered) weights
            assert not np.array_equal(ranks[0]["codes"][step], ranks[0]["codes"][step - 1]), step
    got = [ranks[r]["losses"][s] for s in range(STEPS) for r in (0, 1)]
    np.testing.assert_allclose(got, ref["losses"], rtol=1e-5, atol=1e-6)
    for name, p in ref["params"].items():
        for r in (0, 1):
            np.testing.assert_allclose(ranks[r]["params"][name], p, rtol=1e-5, atol=1e-6, err_msg=name)
