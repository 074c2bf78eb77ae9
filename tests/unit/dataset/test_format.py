"""The .bin format: round trip, header fields, and the bad-file errors (each names the file and the fix)."""
import numpy as np
import pytest

from dataset.format import HEADER_BYTES, MAGIC, BinWriter, open_bin, read_header, write_bin


def test_round_trip_uint16_and_uint32(tmp_path):
    small = write_bin(tmp_path / "a.bin", np.array([1, 2, 65535]), vocab_size=65536, num_docs=2)
    big = write_bin(tmp_path / "b.bin", np.array([1, 70000]), vocab_size=70001, num_docs=1)
    a, b = open_bin(small), open_bin(big)
    assert a.dtype == np.uint16 and a.tolist() == [1, 2, 65535]
    assert b.dtype == np.uint32 and b.tolist() == [1, 70000]
    info = read_header(small)
    assert info == {"dtype": np.dtype(np.uint16), "vocab_size": 65536, "num_tokens": 3, "num_docs": 2}
    assert small.stat().st_size == HEADER_BYTES + 3 * 2


def test_counts_above_32_bits_round_trip(tmp_path):
    from dataset.format import make_header
    h = make_header(100, 2**33 + 5, 2**32 + 1)
    path = tmp_path / "h.bin"
    h.tofile(path)
    info = read_header(path)
    assert info["num_tokens"] == 2**33 + 5 and info["num_docs"] == 2**32 + 1


def test_writer_streams_and_leaves_no_file_on_error(tmp_path):
    path = tmp_path / "s.bin"
    with BinWriter(path, 50) as w:
        w.write(np.arange(10), 1)
        w.write(np.arange(10, 20), 1)
    assert open_bin(path).tolist() == list(range(20)) and read_header(path)["num_docs"] == 2
    with pytest.raises(ValueError, match="token ids must be in"):
        with BinWriter(tmp_path / "bad.bin", 10) as w:
            w.write(np.array([3, 12]))
    assert list(tmp_path.iterdir()) == [path]  # no final file and no temp file left behind


def test_truncated_file_is_named(tmp_path):
    path = write_bin(tmp_path / "t.bin", np.arange(100), 1000)
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + 50)
    with pytest.raises(ValueError, match=r"t\.bin is truncated.*pretokenize"):
        open_bin(path)


def test_headerless_file_without_flag_says_raw_uint16(tmp_path):
    path = tmp_path / "nano.bin"
    np.arange(5000, dtype=np.uint16).tofile(path)  # nanoGPT layout: bare uint16 tokens
    with pytest.raises(ValueError, match=r"nano\.bin.*--data_format=raw_uint16"):
        open_bin(path)
    assert open_bin(path, data_format="raw_uint16").tolist() == list(range(5000))
    short = tmp_path / "short.bin"
    np.arange(10, dtype=np.uint16).tofile(short)  # smaller than a header
    with pytest.raises(ValueError, match=r"short\.bin.*--data_format=raw_uint16"):
        open_bin(short)


def test_wrong_magic_is_named(tmp_path):
    path = write_bin(tmp_path / "m.bin", np.arange(10), 100)
    header = np.fromfile(path, dtype="<i4", count=1)
    assert header[0] == MAGIC
    with open(path, "r+b") as f:
        f.write(np.array([12345], dtype="<i4").tobytes())
    with pytest.raises(ValueError, match=r"m\.bin has no z2all header \(magic 0x3039"):
        open_bin(path)


def test_empty_file_is_named(tmp_path):
    path = tmp_path / "e.bin"
    path.touch()
    with pytest.raises(ValueError, match=r"e\.bin is empty.*pretokenize"):
        open_bin(path)
    with pytest.raises(ValueError, match=r"e\.bin has 0 bytes"):
        open_bin(path, data_format="raw_uint16")


def test_token_id_out_of_range_names_file_max_id_and_fix(tmp_path):
    path = write_bin(tmp_path / "v.bin", np.array([1, 2, 99]), vocab_size=100)
    assert open_bin(path, vocab_size=100).tolist() == [1, 2, 99]
    with pytest.raises(ValueError, match=r"v\.bin contains token id 99 >= vocab_size 64.*--vocab_size to at least 100"):
        open_bin(path, vocab_size=64)


def test_unknown_format_rejected(tmp_path):
    path = write_bin(tmp_path / "x.bin", np.arange(3), 10)
    with pytest.raises(ValueError, match="data_format"):
        open_bin(path, data_format="npy")
