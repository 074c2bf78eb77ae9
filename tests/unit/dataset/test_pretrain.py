"""PretrainDataset: shifted labels, reads stitched across shards, splits, lazy memmaps in DataLoader workers."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataset.config import DataConfig
from dataset.format import write_bin
from dataset.pretrain import PretrainDataset
from dataset.sampler import ResumableBatchSampler


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    sizes, tok = [23, 4, 31], 0
    for i, n in enumerate(sizes):
        write_bin(d / f"shard_{i:06d}.bin", np.arange(tok, tok + n), 1000)
        tok += n
    return d  # the concatenation is 0, 1, ..., 57


def test_windows_are_contiguous_and_shifted(data_dir):
    ds = PretrainDataset(DataConfig(data_dir=str(data_dir), valid_ratio=0.0), 8, 1000, log=lambda m: None)
    assert len(ds) == 57 // 8
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.int64 and x.shape == (8,)
        assert x.tolist() == list(range(8 * i, 8 * i + 8)) and y.tolist() == list(range(8 * i + 1, 8 * i + 9))


def test_train_valid_split_and_valid_data_dir(data_dir, tmp_path):
    tr = PretrainDataset(DataConfig(data_dir=str(data_dir), valid_ratio=0.2), 4, 1000, "train", log=lambda m: None)
    va = PretrainDataset(DataConfig(data_dir=str(data_dir), valid_ratio=0.2), 4, 1000, "valid", log=lambda m: None)
    assert len(tr) + len(va) == 57 // 4 and len(va) == 3
    starts = {int(ds[i][0][0]) for ds in (tr, va) for i in range(len(ds))}
    assert len(starts) == 57 // 4
    vdir = tmp_path / "valid"
    vdir.mkdir()
    write_bin(vdir / "v.bin", np.arange(500, 521), 1000)
    va = PretrainDataset(DataConfig(data_dir=str(data_dir), valid_data_dir=str(vdir)), 4, 1000, "valid", log=lambda m: None)
    tr = PretrainDataset(DataConfig(data_dir=str(data_dir), valid_data_dir=str(vdir)), 4, 1000, "train", log=lambda m: None)
    assert len(va) == 5 and va[0][0].tolist() == [500, 501, 502, 503] and len(tr) == 57 // 4


def test_bad_vocab_and_too_long(data_dir):
    with pytest.raises(ValueError, match="contains token id 57 >= vocab_size 50"):
        PretrainDataset(DataConfig(data_dir=str(data_dir)), 8, 50, log=lambda m: None)
    with pytest.raises(ValueError, match="max_seq_len=64"):
        PretrainDataset(DataConfig(data_dir=str(data_dir)), 64, 1000, log=lambda m: None)


def test_pickles_without_memmaps_and_loads_in_workers(data_dir):
    ds = PretrainDataset(DataConfig(data_dir=str(data_dir), valid_ratio=0.0), 8, 1000, log=lambda m: None)
    ds[0]
    assert ds._maps is not None and pickle.loads(pickle.dumps(ds))._maps is None
    sampler = ResumableBatchSampler(len(ds), 2, seed=3)
    batches = iter(DataLoader(ds, batch_sampler=sampler, num_workers=1, multiprocessing_context="fork"))
    x, y = next(batches)
    assert x.shape == (2, 8) and torch.equal(x[:, 1:], y[:, :-1])
    expect = torch.stack([ds[i][0] for i in sampler.micro_batch(0)])
    assert torch.equal(x, expect)
