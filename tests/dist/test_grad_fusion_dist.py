"""Gradient-accumulation fusion on 2 gloo ranks: main grads equal the single-process full-batch grads."""
import torch

from model import Z2allConfig, Z2allForCausalLM
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from tests.support.launch import run_dist

SHAPE = dict(vocab_size=96, hidden_dim=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=40,
             max_seq_len=16)


def _case(ctx, micro: int = 2, rows: int = 2):
    torch.manual_seed(0)
    ref = Z2allForCausalLM(Z2allConfig(**SHAPE))
    net = Z2allForCausalLM(Z2allConfig(**SHAPE))
    net.load_state_dict(ref.state_dict())
    ddp = DistributedDataParallel(net, DDPConfig(bucket_size=3000, gradient_accumulation_fusion="on"), ctx)
    w = ctx.world_size
    data = torch.randint(0, 96, (w * micro * rows, 9), generator=torch.Generator().manual_seed(5))
    # the full batch's mean loss = the mean over ranks and micro-batches of each chunk's mean loss
    ref(data[:, :-1], targets=data[:, 1:]).loss.backward()
    chunks = [data[(m * w + ctx.rank) * rows:(m * w + ctx.rank + 1) * rows] for m in range(micro)]
    ddp.zero_grad_buffer()
    with ddp.no_sync():
        for c in chunks[:-1]:
            (ddp(c[:, :-1], targets=c[:, 1:]).loss / micro).backward()
    (ddp(chunks[-1][:, :-1], targets=chunks[-1][:, 1:]).loss / micro).backward()
    ddp.finish_grad_sync()
    assert len(ddp.buffers[0].buckets) >= 3
    for (name, p), q in zip(ref.named_parameters(), net.parameters()):
        assert q.grad is None, name
        torch.testing.assert_close(ddp.main_grad(q), p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_fused_grads_equal_full_batch_on_two_ranks():
    run_dist(_case, 2)
