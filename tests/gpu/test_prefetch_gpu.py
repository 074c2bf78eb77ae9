"""BatchPrefetcher's CUDA path: batches arrive on the GPU, in order, equal to the CPU ones (skipped without CUDA)."""
import pytest
import torch

from dataset.prefetch import BatchPrefetcher

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _batches(n: int, pinned: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i in range(n):
        x = torch.arange(4096, dtype=torch.int64).reshape(8, 512) + i
        pair = (x, x + 1)
        out.append(tuple(t.pin_memory() for t in pair) if pinned else pair)
    return out


@pytest.mark.parametrize("pinned", [False, True], ids=["pageable", "pinned"])
def test_batches_arrive_on_the_gpu_in_order(pinned):
    batches = _batches(5, pinned)
    pf = BatchPrefetcher(iter(batches), "cuda")
    assert pf._stream is not None  # the side-stream path, not the plain copy
    got = []
    for x, y in pf:
        assert x.device.type == "cuda" and y.device.type == "cuda"
        # work on the compute stream right after taking the batch: it must see the finished copy
        got.append(((x * 2).cpu(), (y * 2).cpu()))
    assert len(got) == len(batches)
    for (x, y), (ex, ey) in zip(got, batches):
        assert torch.equal(x, ex * 2) and torch.equal(y, ey * 2)


def test_an_empty_iterable_stops_at_once():
    assert list(BatchPrefetcher(iter([]), "cuda")) == []


def test_disabled_on_cuda_copies_without_the_side_stream():
    pf = BatchPrefetcher(_batches(2, False), "cuda", enabled=False)
    assert pf._stream is None
    out = list(pf)
    assert [x.device.type for x, _ in out] == ["cuda", "cuda"] and torch.equal(out[1][0].cpu(), _batches(2, False)[1][0])
