"""Sample-index maps: windows across shard ends, staleness, the cached range scan, splits, errors."""
import json
import os

import numpy as np
import pytest

from dataset.format import write_bin
from dataset.sample_index import index_paths, load_or_build_sample_index, split_windows, write_windows


def _shards(d, sizes, vocab=1000, start=0):
    d.mkdir(exist_ok=True)
    tok = start
    for i, n in enumerate(sizes):
        write_bin(d / f"shard_{i:06d}.bin", np.arange(tok, tok + n) % vocab, vocab)
        tok += n
    return d


def test_windows_match_a_python_loop(tmp_path):
    counts = np.array([7, 0, 1, 13, 5, 2], dtype=np.int64)
    for L in (1, 2, 3, 5, 8, 27):
        write_windows(tmp_path / f"w{L}.npy", counts, L)
        got = np.load(tmp_path / f"w{L}.npy")
        flat = [(f, o) for f, n in enumerate(counts) for o in range(n)]
        expect = [flat[g] for g in range(0, len(flat) - L, L)]
        assert got.tolist() == [list(e) for e in expect], L


def test_build_then_reuse_then_rebuild_when_stale(tmp_path):
    d = _shards(tmp_path / "data", [50, 30])
    msgs = []
    idx = load_or_build_sample_index(d, 8, 1000, log=msgs.append)
    assert len(idx) == (80 - 1) // 8 and "not found" in msgs[0]
    msgs.clear()
    again = load_or_build_sample_index(d, 8, 1000, log=msgs.append)
    assert msgs == [] and np.array_equal(again.windows, idx.windows)
    write_bin(d / "shard_000002.bin", np.arange(40), 1000)  # a shard added
    idx = load_or_build_sample_index(d, 8, 1000, log=msgs.append)
    assert "stale" in msgs[0] and "added" in msgs[0] and len(idx) == (120 - 1) // 8
    msgs.clear()
    write_bin(d / "shard_000000.bin", np.arange(60), 1000)  # a shard changed
    load_or_build_sample_index(d, 8, 1000, log=msgs.append)
    assert "changed" in msgs[0]
    msgs.clear()
    os.unlink(d / "shard_000001.bin")  # a shard removed
    idx = load_or_build_sample_index(d, 8, 1000, log=msgs.append)
    assert "removed" in msgs[0] and sum(idx.num_tokens) == 100


def test_range_scan_cached_and_checked_against_vocab(tmp_path, monkeypatch):
    d = _shards(tmp_path / "data", [40, 40], vocab=100)
    load_or_build_sample_index(d, 4, 100, log=lambda m: None)
    side = json.loads(index_paths(d, 4)[1].read_text())
    assert [s["max_id"] for s in side["shards"]] == [39, 79]
    import dataset.sample_index as si
    monkeypatch.setattr(si, "max_token_id", lambda t: pytest.fail("rescanned a cached shard"))
    load_or_build_sample_index(d, 6, 100, log=lambda m: None)  # another L reuses the cached scan
    with pytest.raises(ValueError, match=r"shard_000001\.bin contains token id 79 >= vocab_size 64.*at least 80"):
        load_or_build_sample_index(d, 4, 64, log=lambda m: None)


def test_max_seq_len_longer_than_data(tmp_path):
    d = _shards(tmp_path / "data", [10, 5])
    with pytest.raises(ValueError, match=r"max_seq_len=15 .* only 15 tokens in 2 shard.*--max_seq_len \(at most 14\)"):
        load_or_build_sample_index(d, 15, 1000, log=lambda m: None)
    assert len(load_or_build_sample_index(d, 14, 1000, log=lambda m: None)) == 1


def test_missing_or_empty_data_dir(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_or_build_sample_index(tmp_path / "nope", 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no \.bin shards.*pretokenize"):
        load_or_build_sample_index(tmp_path / "empty", 4)


def test_raw_uint16_single_file(tmp_path):
    path = tmp_path / "train.bin"
    np.arange(100, dtype=np.uint16).tofile(path)
    with pytest.raises(ValueError, match="--data_format=raw_uint16"):
        load_or_build_sample_index(path, 8, log=lambda m: None)
    idx = load_or_build_sample_index(path, 8, 50304, data_format="raw_uint16", log=lambda m: None)
    assert len(idx) == 99 // 8 and index_paths(path, 8)[0].name == "train.sample_index_8.npy"


def test_split_is_deterministic_disjoint_and_complete():
    tr, va = split_windows(1000, 0.01)
    assert len(va) == 10 and len(tr) == 990
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(1000))
    tr2, va2 = split_windows(1000, 0.01)
    assert np.array_equal(va, va2)
    assert len(split_windows(5, 0.01)[1]) == 1 and len(split_windows(5, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="leaves no training window"):
        split_windows(1, 0.5)
