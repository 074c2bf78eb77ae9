"""BatchPrefetcher on the CPU path: passes batches through in order and stops at the end.
The CUDA path (side stream, pinned copies) is tested in tests/gpu/test_prefetch_gpu.py."""
import torch

from dataset.prefetch import BatchPrefetcher


def test_cpu_path_passes_batches_through():
    batches = [(torch.full((2, 3), i), torch.full((2, 3), i + 1)) for i in range(4)]
    out = list(BatchPrefetcher(iter(batches), torch.device("cpu")))
    assert len(out) == 4
    for (x, y), (ex, ey) in zip(out, batches):
        assert torch.equal(x, ex) and torch.equal(y, ey) and x.device.type == "cpu"


def test_disabled_prefetcher_passes_batches_through():
    batches = [(torch.zeros(1), torch.ones(1))]
    pf = BatchPrefetcher(batches, "cpu", enabled=False)
    assert [tuple(t.tolist() for t in b) for b in pf] == [([0.0], [1.0])]
