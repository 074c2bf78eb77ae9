"""SwiGLU: the Triton kernels (CPU interpreter) against the reference, fused gate_up and separate inputs;
swiglu_down (SwiGLU + down projection, recomputing the SwiGLU output in backward) against swiglu_ref + F.linear."""
import pytest
import torch
import torch.nn.functional as F

from model.ops import silu_mul, swiglu, swiglu_down, swiglu_down_ref, swiglu_ref
from model.ops.swiglu import silu_mul_ref
from tests.unit.ops._check import IN_CHILD, assert_matches, interp, leaf, run_file_in_interpreter

# gate_up shapes (..., 2I): I not a power of two, a sequence of 1, many narrow rows (several per tile),
# I above one column block (1100 > 1024)
SHAPES = [(2, 3, 2 * 37), (1, 1, 2 * 5), (70, 2 * 33), (2, 2 * 1100)]


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference(shape, dtype):
    gate_up = leaf(shape, dtype, 1, scale=2.0)
    assert_matches(lambda a: swiglu(a, impl="triton"), swiglu_ref, (gate_up,))


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_separate_and_strided(dtype):
    base = leaf((3, 4, 50), dtype, 2)
    up = leaf((3, 4, 41), dtype, 3)
    assert_matches(
        lambda a, b: silu_mul(a[..., :41], b, impl="triton"), lambda a, b: silu_mul_ref(a[..., :41], b), (base, up)
    )


@interp
@pytest.mark.parametrize("flat,tiles", [(True, None), (False, None), (False, (4, 16, 2))])
def test_forward_launch_variants_agree(flat, tiles):
    """The flat 1D forward (the default) and the 2D tiles (the heuristic, and an override as the sweep passes)."""
    from model.ops.swiglu import silu_mul_fwd_triton

    x = leaf((7, 2 * 45), torch.bfloat16, 6, scale=2.0).detach()
    got = silu_mul_fwd_triton(x[:, :45], x[:, 45:], flat=flat, block=64, num_warps=2, tiles=tiles)
    torch.testing.assert_close(got, swiglu_ref(x), rtol=1e-2, atol=1e-2)


# (gate_up shape, d): odd widths, a single row, I above one column block
DOWN_SHAPES = [((2, 3, 2 * 37), 19), ((1, 1, 2 * 5), 3), ((70, 2 * 33), 24), ((2, 2 * 1100), 5)]


def _linear_of_swiglu(gate_up, weight):
    return F.linear(swiglu_ref(gate_up), weight)


def _down_inputs(shape, d, dtype):
    return leaf(shape, dtype, 4, scale=2.0), leaf((d, shape[-1] // 2), dtype, 5, scale=0.2)


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,d", DOWN_SHAPES)
def test_swiglu_down_triton_matches_reference(shape, d, dtype):
    for recompute in (True, False):
        assert_matches(lambda a, w: swiglu_down(a, w, impl="triton", recompute=recompute), _linear_of_swiglu,
                       _down_inputs(shape, d, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,d", DOWN_SHAPES[:3])
def test_swiglu_down_torch_path_matches_reference(shape, d, dtype):
    inputs = _down_inputs(shape, d, dtype)
    assert_matches(lambda a, w: swiglu_down(a, w, impl="torch"), _linear_of_swiglu, inputs)
    assert_matches(swiglu_down_ref, _linear_of_swiglu, inputs)


def test_swiglu_down_saves_gate_up_not_the_swiglu_output():
    gate_up, weight = _down_inputs((4, 6, 2 * 9), 5, torch.float32)
    for recompute in (True, False):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = swiglu_down(gate_up, weight, impl="torch", recompute=recompute)
        activations = [t for t in saved if t.data_ptr() != weight.data_ptr()]
        stored_h = any(t.shape[-1] == 9 for t in activations)
        assert stored_h != recompute
        if recompute:
            assert [tuple(t.shape) for t in activations] == [(24, 18)]
            assert activations[0].data_ptr() == gate_up.data_ptr()
        out.sum().backward()


def test_swiglu_down_weight_grad_reaches_the_parameter_hooks():
    lin = torch.nn.Linear(7, 4, bias=False)
    fired = []
    lin.weight.register_post_accumulate_grad_hook(lambda p: fired.append(p.grad.clone()))
    gate_up = torch.randn(3, 14, requires_grad=True)
    swiglu_down(gate_up, lin.weight).sum().backward()
    assert len(fired) == 1 and torch.equal(fired[0], lin.weight.grad)


def test_swiglu_down_errors():
    with pytest.raises(ValueError, match="even"):
        swiglu_down(torch.randn(2, 5), torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"2\*I == gate_up"):
        swiglu_down(torch.randn(2, 8), torch.randn(3, 5))
    with pytest.raises(TypeError, match="dtype"):
        swiglu_down(torch.randn(2, 8), torch.randn(3, 4, dtype=torch.bfloat16))


def test_reference_formula_and_errors():
    g, u = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(swiglu(torch.cat((g, u), -1)), F.silu(g) * u)
    with pytest.raises(ValueError, match="even"):
        swiglu(torch.randn(2, 5))
    with pytest.raises(ValueError, match="match"):
        silu_mul(g, u[:, :3])


@pytest.mark.skipif(IN_CHILD, reason="this is the launcher")
def test_triton_kernels_under_interpreter():
    run_file_in_interpreter(__file__)
