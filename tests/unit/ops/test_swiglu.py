"""SwiGLU: the Triton kernels (CPU interpreter) against the reference, fused gate_up and separate inputs."""
import pytest
import torch
import torch.nn.functional as F

from model.ops import silu_mul, swiglu, swiglu_ref
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
