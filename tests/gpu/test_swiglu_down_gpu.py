"""swiglu_down on the GPU: the Triton path against swiglu_ref + F.linear (fp32, bf16), what it keeps for backward,
and the model's selective mode keeping the same grads as none (skipped without CUDA)."""
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from model import Z2allConfig, Z2allForCausalLM  # noqa: E402
from model.ops import swiglu_down, swiglu_ref  # noqa: E402
from tests.gpu.test_ops_gpu import _close, _leaf  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,d", [((2, 37, 2 * 1100), 96), ((3, 2 * 257), 130), ((4, 512, 2 * 1408), 512)])
def test_swiglu_down_matches_reference(shape, d, dtype):
    gate_up = _leaf(shape, dtype, 0, scale=2.0)
    weight = _leaf((d, shape[-1] // 2), dtype, 1, scale=0.05)
    d_out = torch.randn(*shape[:-1], d, device="cuda").to(dtype)
    ref = F.linear(swiglu_ref(gate_up), weight)
    ref_grads = torch.autograd.grad(ref, (gate_up, weight), d_out)
    for recompute in (True, False):
        out = swiglu_down(gate_up, weight, recompute=recompute)
        grads = torch.autograd.grad(out, (gate_up, weight), d_out)
        _close(out, ref, dtype)
        for g, r in zip(grads, ref_grads):
            assert g.dtype == r.dtype
            _close(g, r, dtype)


def test_swiglu_down_keeps_only_gate_up():
    gate_up = _leaf((2, 64, 2 * 384), torch.bfloat16, 2)
    weight = _leaf((128, 384), torch.bfloat16, 3)
    saved_bytes = {}
    for recompute in (True, False):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = swiglu_down(gate_up, weight, recompute=recompute)
        saved_bytes[recompute] = sum(t.numel() * t.element_size() for t in saved if t.data_ptr() != weight.data_ptr())
        out.float().sum().backward()
    assert saved_bytes[True] == 2 * 64 * 2 * 384 * 2  # gate_up only
    assert saved_bytes[False] == saved_bytes[True] + 2 * 64 * 384 * 2  # + the SwiGLU output


def test_model_selective_equals_none_on_gpu():
    grads = []
    x = torch.randint(0, 256, (2, 64), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    for ac in ("none", "selective"):
        torch.manual_seed(0)
        cfg = Z2allConfig(vocab_size=256, hidden_dim=128, n_layers=2, n_heads=4, n_kv_heads=2,
                          intermediate_size=352, max_seq_len=64, activation_checkpointing=ac)
        m = Z2allForCausalLM(cfg).cuda().to(torch.bfloat16)
        loss = m(x, labels=x).loss
        loss.backward()
        grads.append((loss.detach(), {k: p.grad.float() for k, p in m.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for k, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][k], g, atol=2e-2 * max(1.0, g.abs().max().item()), rtol=2e-2, msg=k)
