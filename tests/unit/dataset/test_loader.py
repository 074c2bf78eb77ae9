"""BatchStream: worker processes read ahead without changing the batches, seek is absolute, batch dataclasses move."""
import dataclasses
import itertools

import numpy as np
import torch

from dataset.config import DataConfig
from dataset.format import write_bin
from dataset.loader import BatchStream, stack_windows
from dataset.prefetch import map_tensors, move_batch
from dataset.pretrain import PretrainDataset
from dataset.sampler import ResumableBatchSampler


def _dataset(tmp_path):
    write_bin(tmp_path / "s.bin", np.arange(3000) % 997, 1000)
    return PretrainDataset(DataConfig(data_dir=str(tmp_path), valid_ratio=0.0), 16, 1000, log=lambda m: None)


def _take(stream, n):
    return [tuple(t.clone() for t in b) for b in itertools.islice(stream, n)]


def test_workers_give_the_same_batches_and_seek_is_absolute(tmp_path):
    ds = _dataset(tmp_path)
    cpu = torch.device("cpu")
    plain = BatchStream(ds, ResumableBatchSampler(len(ds), 4, 1, 2, seed=3), stack_windows, cpu)
    ahead = BatchStream(ds, ResumableBatchSampler(len(ds), 4, 1, 2, seed=3), stack_windows, cpu, num_workers=2)
    a, b = _take(plain, 12), _take(ahead, 12)
    assert all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))
    # the workers read ahead of what was taken; seek(consumed) restarts exactly at rank 1's next micro-batch
    ahead.seek(2 * 5)  # 5 steps of 2 ranks consumed
    assert all(torch.equal(x, y) for x, y in zip(_take(ahead, 1)[0], a[5]))
    assert ahead.state_at(10) == {"epoch": 10 // (len(ds) // 4), "consumed_micro_batches": 10 % (len(ds) // 4)}


@dataclasses.dataclass
class _Batch:
    ids: torch.Tensor
    n: int
    extra: tuple


def test_map_tensors_walks_dataclasses_and_tuples():
    b = _Batch(torch.zeros(2), 3, (torch.ones(1), None))
    doubled = map_tensors(b, lambda t: t + 1)
    assert torch.equal(doubled.ids, torch.ones(2)) and doubled.n == 3 and doubled.extra[1] is None
    assert torch.equal(doubled.extra[0], torch.full((1,), 2.0))
    assert move_batch(b, torch.device("cpu")).n == 3
