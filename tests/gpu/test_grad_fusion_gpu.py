"""Gradient-accumulation fusion on the GPU: the bf16-in/fp32-out accumulating GEMM, and a bf16 Z2all's main grads
with fusion (the CUDA default) against the hook path (skipped without CUDA)."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from model import Z2allConfig, Z2allForCausalLM  # noqa: E402
from parallel.config import DDPConfig  # noqa: E402
from parallel.ddp import DistributedDataParallel, _has_addmm_out_dtype, addmm_into  # noqa: E402
from parallel.dist import init_distributed  # noqa: E402


@pytest.mark.parametrize("n,out_f,in_f", [(1000, 96, 130), (4096, 768, 256), (37, 5, 3)])
def test_addmm_into_fp32_accumulator_from_bf16(n, out_f, in_f):
    g = torch.Generator(device="cuda").manual_seed(0)
    dy = torch.randn(n, out_f, device="cuda", generator=g).bfloat16()
    x = torch.randn(n, in_f, device="cuda", generator=g).bfloat16()
    acc = torch.randn(out_f, in_f, device="cuda", generator=g)
    want = acc.double() + dy.double().t() @ x.double()
    ptr = acc.data_ptr()
    addmm_into(acc, dy, x)
    assert acc.data_ptr() == ptr and acc.dtype == torch.float32
    # an fp32 accumulation of exact bf16 products: far tighter than a bf16 product would be
    err = ((acc.double() - want).abs().max() / want.abs().max()).item()
    assert err < (1e-5 if _has_addmm_out_dtype() else 1e-2), err


def _main_grads(fusion: str):
    torch.manual_seed(0)
    cfg = Z2allConfig(vocab_size=512, hidden_dim=256, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=512,
                      max_seq_len=128)
    with torch.device("cuda"):
        model = Z2allForCausalLM(cfg)
    model.to(torch.bfloat16)
    ddp = DistributedDataParallel(model, DDPConfig(bucket_size=200_000, gradient_accumulation_fusion=fusion),
                                  init_distributed("cuda", env={}))
    g = torch.Generator(device="cuda").manual_seed(1)
    data = [torch.randint(0, 512, (4, 129), device="cuda", generator=g) for _ in range(2)]
    ddp.zero_grad_buffer()
    with ddp.no_sync():
        ddp(data[0][:, :-1], targets=data[0][:, 1:]).loss.backward()
    ddp(data[1][:, :-1], targets=data[1][:, 1:]).loss.backward()
    ddp.finish_grad_sync()
    routed = sum(getattr(m, "grad_sink", None) is not None for m in model.modules())
    return {n: ddp.main_grad(p).clone() for n, p in model.named_parameters()}, routed


def test_bf16_model_fused_main_grads_match_the_hook_path():
    ref, routed_off = _main_grads("off")
    got, routed = _main_grads("auto")
    assert routed_off == 0 and routed == 8, "auto is on for CUDA: 4 linears per layer"
    for name in ref:
        scale = ref[name].abs().max().item()
        err = (got[name] - ref[name]).abs().max().item()
        # the hook path rounds each micro-batch's product to bf16 first; fusion keeps it fp32
        assert err <= 2e-2 * scale + 1e-6, (name, err, scale)


def test_zeroing_on_the_comm_stream_is_ordered_before_accumulation():
    """zero_grad_buffer fills on the comm stream; stale values must never leak into the next step's grads."""
    torch.manual_seed(0)
    cfg = Z2allConfig(vocab_size=512, hidden_dim=256, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=512,
                      max_seq_len=128)
    with torch.device("cuda"):
        ref = Z2allForCausalLM(cfg)
        model = Z2allForCausalLM(cfg)
    model.load_state_dict(ref.state_dict())
    ddp = DistributedDataParallel(model, DDPConfig(bucket_size=200_000), init_distributed("cuda", env={}))
    data = torch.randint(0, 512, (4, 129), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    ref(data[:, :-1], targets=data[:, 1:]).loss.backward()
    for _ in range(3):
        for buf in ddp.buffers:
            buf.grad_data.fill_(1e6)  # stale grads, as if from the previous step
        ddp.zero_grad_buffer()
        ddp(data[:, :-1], targets=data[:, 1:]).loss.backward()
        ddp.finish_grad_sync()
        for (name, p), q in zip(ref.named_parameters(), model.parameters()):
            torch.testing.assert_close(ddp.main_grad(q), p.grad, rtol=1e-4, atol=1e-5, msg=name)
