"""RMSNorm: the Triton kernels (CPU interpreter) against the reference, forward and backward."""
import pytest
import torch

from model.ops import resolve_impl, rms_norm, rms_norm_ref
from tests.unit.ops._check import IN_CHILD, assert_matches, interp, leaf, run_file_in_interpreter

# (shape): hidden not a power of two, a sequence of 1, rows not a multiple of the row block, several row
# blocks per persistent program (300 rows of 24 -> 5 blocks over 3 programs), a wide row (4 rows per program)
SHAPES = [(3, 5, 37), (1, 1, 8), (7, 130), (300, 24), (2, 1000)]


@interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference(shape, dtype):
    x = leaf(shape, dtype, seed=1)
    w = leaf(shape[-1:], dtype, seed=2, scale=0.5)
    assert_matches(lambda a, b: rms_norm(a, b, 1e-5, impl="triton"), lambda a, b: rms_norm_ref(a, b, 1e-5), (x, w))


@interp
def test_bf16_input_fp32_weight_and_strided_input():
    base = leaf((4, 6, 40), torch.bfloat16, seed=3)
    x = base[:, :, :33]  # rows with a stride larger than the width
    w = leaf((33,), torch.float32, seed=4)
    assert_matches(
        lambda a, b: rms_norm(a, b, 1e-6, impl="triton"), lambda a, b: rms_norm_ref(a, b, 1e-6), (x, w),
        tol_dtype=torch.bfloat16,
    )


@interp
@pytest.mark.parametrize("rows,cols", [(1, 5), (3, 37), (65, 33), (130, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_colsum_matches_torch(rows, cols, dtype):
    # the dW reduction of the backward: rows not a multiple of its 128-row tile (COLSUM_BLOCK_R), columns not of its
    # 16-column block (COLSUM_BLOCK_C)
    from model.ops.rmsnorm import colsum_triton

    partial = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * cols))
    got = colsum_triton(partial, dtype)
    assert got.dtype == dtype and got.shape == (cols,)
    want = partial.double().sum(0)
    tol = {torch.float32: 1e-5, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * rows ** 0.5)


def test_reference_formula():
    x = torch.tensor([[3.0, 4.0]])
    w = torch.tensor([1.0, 2.0])
    rms = (12.5 + 1e-5) ** 0.5
    torch.testing.assert_close(rms_norm_ref(x, w, 1e-5), torch.tensor([[3.0 / rms, 8.0 / rms]]))


def test_auto_is_torch_on_cpu_and_bad_args():
    assert resolve_impl("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="impl"):
        resolve_impl("cuda", "cpu")
    with pytest.raises(ValueError, match="weight shape"):
        rms_norm(torch.randn(2, 4), torch.ones(3), 1e-5)
    with pytest.raises(TypeError, match="dtype"):
        rms_norm(torch.ones(2, 4, dtype=torch.int64), torch.ones(4), 1e-5)


@interp
def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        rms_norm(torch.randn(2, 4), torch.ones(4), 1e-5, impl="triton")


@pytest.mark.skipif(IN_CHILD, reason="this is the launcher")
def test_triton_kernels_under_interpreter():
    run_file_in_interpreter(__file__)
