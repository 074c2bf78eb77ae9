"""Gradient-accumulation fusion: the DDP's weight-grad sink against the hook path, on one CPU process."""
import gc
import weakref

import pytest
import torch

from model import Z2allConfig, Z2allForCausalLM
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel, addmm_into
from parallel.dist import DistContext

SHAPE = dict(vocab_size=96, hidden_dim=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=40,
             max_seq_len=16)


def _ctx():
    return DistContext(0, 1, 0, torch.device("cpu"), None, None)


def _model(dtype, **kw):
    torch.manual_seed(0)
    return Z2allForCausalLM(Z2allConfig(**SHAPE, **kw)).to(dtype)


def _main_grads(dtype, fusion: str, micro: int = 3, overlap=True, **model_kw):
    """main grads after `micro` micro-batches (all but the last under no_sync) of a tiny Z2all."""
    model = _model(dtype, **model_kw)
    ddp = DistributedDataParallel(model, DDPConfig(bucket_size=3000, overlap_grad_reduce=overlap,
                                                   gradient_accumulation_fusion=fusion), _ctx())
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 96, (2, 9), generator=g) for _ in range(micro)]
    ddp.zero_grad_buffer()
    with ddp.no_sync():
        for x in batches[:-1]:
            ddp(x[:, :-1], targets=x[:, 1:]).loss.backward()
    ddp(batches[-1][:, :-1], targets=batches[-1][:, 1:]).loss.backward()
    ddp.finish_grad_sync()
    fused = {n for n, p in model.named_parameters() if p.grad is not None}
    assert not fused, f"every managed param's grad is freed after accumulation, got {fused}"
    return {n: ddp.main_grad(p).clone() for n, p in model.named_parameters()}, ddp


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_fused_main_grads_equal_the_hook_path(overlap, recompute):
    ref, _ = _main_grads(torch.float32, "off", overlap=overlap, activation_checkpointing=recompute)
    got, ddp = _main_grads(torch.float32, "on", overlap=overlap, activation_checkpointing=recompute)
    assert len(ddp.buffers[0].buckets) >= 3
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_params_fp32_main_grads_on_the_cpu_match_bitwise():
    """On the CPU there is no bf16-in/fp32-out GEMM: the sink multiplies in bf16 and adds, as the hook path does."""
    ref, _ = _main_grads(torch.bfloat16, "off")
    got, _ = _main_grads(torch.bfloat16, "on")
    for name in ref:
        assert got[name].dtype == torch.float32 and torch.equal(got[name], ref[name]), name


def test_sink_reaches_every_decoder_linear_and_auto_is_off_on_the_cpu():
    model = _model(torch.float32)
    DistributedDataParallel(model, DDPConfig(), _ctx())
    assert all(m.grad_sink is None for m in model.layers.modules() if hasattr(m, "grad_sink"))
    ddp = DistributedDataParallel(model, DDPConfig(gradient_accumulation_fusion="on"), _ctx())
    sinks = [m.grad_sink for m in model.layers.modules() if hasattr(m, "grad_sink")]
    assert len(sinks) == 4 * SHAPE["n_layers"] and all(s is not None for s in sinks)
    assert model.set_weight_grad_sink(None) == 4 * SHAPE["n_layers"]
    del ddp


def test_on_without_a_sink_setter_is_a_user_error():
    with pytest.raises(ValueError, match="set_weight_grad_sink"):
        DistributedDataParallel(torch.nn.Linear(3, 4), DDPConfig(gradient_accumulation_fusion="on"), _ctx())
    with pytest.raises(ValueError, match="gradient_accumulation_fusion"):
        DDPConfig(gradient_accumulation_fusion="yes").validate()


def test_a_dropped_ddp_is_freed_and_its_sink_declines():
    model = _model(torch.float32)
    ddp = DistributedDataParallel(model, DDPConfig(gradient_accumulation_fusion="on"), _ctx())
    ref = weakref.ref(ddp)
    del ddp
    gc.collect()
    assert ref() is None
    x = torch.randint(0, 96, (2, 8))
    model(x, targets=x).loss.backward()  # the dead sink declines: autograd grads as without a DDP
    assert all(p.grad is not None for p in model.parameters())


def test_addmm_into_paths():
    g = torch.Generator().manual_seed(2)
    dy, x = torch.randn(10, 4, generator=g), torch.randn(10, 6, generator=g)
    acc = torch.randn(4, 6, generator=g)
    want = acc + dy.t() @ x
    addmm_into(acc, dy, x)  # same dtype: one addmm_
    torch.testing.assert_close(acc, want, rtol=1e-6, atol=1e-6)
    acc32 = torch.zeros(4, 6)
    addmm_into(acc32, dy.bfloat16(), x.bfloat16())  # CPU, bf16 inputs, fp32 accumulator: product then add
    assert torch.equal(acc32, (dy.bfloat16().t() @ x.bfloat16()).float())
