"""The data writers on a real full tmpfs: pretokenize (pretraining, SFT, DPO), the sample index, the demo data and
the demo corpus give one line naming what, where and the fix (exit 2 from their CLIs), leave no temporary file, keep
the earlier output, and work again once space is back. And the data's own faults: a sample index overwritten by
garbage is rebuilt, a shard truncated after its index was built is named before any training."""
import json
import os

import numpy as np
import pytest

from data_preprocess import demo, pretokenize_sft
from data_preprocess.build_sample_index import main as build_index_main
from data_preprocess.pretokenize import main as pretokenize_main
from dataset.sample_index import index_paths, load_or_build_sample_index
from tests.support.disks import fill, needs_mount, tmpfs  # noqa: F401
from dataset.format import write_bin
from tests.unit.data_preprocess.test_demo import fake_corpus  # noqa: F401
from tests.unit.dataset.sft_fixtures import CHATS, tiny_tokenizer, write_jsonl
from utils.cli import run_main
from utils.disk_faults import DiskFault


def _tree(d):
    """Every file under d (hidden ones included) and its bytes, but the filler."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.name.startswith(".fill")}


def _docs(tmp_path, n):
    path = tmp_path / f"docs{n}.jsonl"
    write_jsonl(path, [{"text": f"def f{i}(x):\n    return x * {i}  # {'the answer ' * (i % 7)}\n"} for i in range(n)])
    return str(path)


@needs_mount
def test_pretokenize_on_a_full_disk_keeps_the_earlier_shards(tmp_path, tmpfs, capsys):
    _, tok = tiny_tokenizer(tmp_path / "tok")
    out = tmpfs(2) / "bin"
    args = [f"--tokenizer_dir={tok}", f"--out_dir={out}", "--num_workers=1", "--shard_tokens=2000", "--no_progress"]
    assert run_main(pretokenize_main, [f"--input={_docs(tmp_path, 40)}", *args]) == 0
    before = _tree(out)
    filler = fill(out.parent, leave=4 * 4096)  # room for a shard or two of the larger input, not for all of it
    capsys.readouterr()
    assert run_main(pretokenize_main, [f"--input={_docs(tmp_path, 2000)}", "--overwrite", *args]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: no space left on device while writing the pretokenized shards to {out}: free space there "
                   f"or choose another --out_dir (it is as it was)\n"), err
    assert _tree(out) == before  # the earlier shards, tokenizer and summary, and no temporary file
    filler.unlink()
    assert run_main(pretokenize_main, [f"--input={_docs(tmp_path, 2000)}", "--overwrite", *args]) == 0
    assert json.loads((out / "pretokenize.json").read_text())["documents"] == 2000


@needs_mount
@pytest.mark.parametrize("task", ["sft", "dpo"])
def test_pretokenize_sft_on_a_full_disk_keeps_the_earlier_build(tmp_path, tmpfs, task, capsys):
    _, tok = tiny_tokenizer(tmp_path / "tok")
    disk = tmpfs(2)
    if task == "sft":
        records = [{"messages": CHATS[i % 3]} for i in range(600)]
    else:
        records = [{"prompt": f"colour {i}?", "chosen": "red " * (i % 9 + 1), "rejected": "no"} for i in range(600)]
    small, large = write_jsonl(tmp_path / "small.jsonl", records[:5]), write_jsonl(tmp_path / "large.jsonl", records)
    out = disk / "set"
    common = ["--tokenizer_dir", tok, "--out_dir", str(out), f"--task={task}", "--num_workers=1", "--no_progress"]
    assert run_main(pretokenize_sft.main, ["--input", small, *common]) == 0
    before = _tree(disk)
    filler = fill(disk, leave=8 * 4096)
    capsys.readouterr()
    assert run_main(pretokenize_sft.main, ["--input", large, *common]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: no space left on device while writing the pretokenized {task} data to {out}: free space "
                   f"there or choose another --out_dir (an earlier build there is kept)\n"), err
    assert _tree(disk) == before and sorted(os.listdir(disk)) == sorted(["set", filler.name])
    filler.unlink()
    assert run_main(pretokenize_sft.main, ["--input", large, *common]) == 0


def _shards(d, sizes, vocab=1000):
    d.mkdir(exist_ok=True)
    for i, n in enumerate(sizes):
        write_bin(d / f"shard_{i:06d}.bin", np.arange(n) % vocab, vocab)
    return d


@needs_mount
def test_the_sample_index_on_a_full_disk(tmp_path, tmpfs, capsys):
    data = _shards(tmpfs(2) / "data", [200_000, 100_000])
    filler = fill(data.parent, leave=4096)  # the map needs many pages
    assert run_main(build_index_main, [f"--data_dir={data}", "--max_seq_len=4"]) == 2
    npy, _ = index_paths(data, 4)
    assert capsys.readouterr().err.startswith(f"error: no space left on device while writing the sample index to "
                                              f"{npy}: free space there, or build it where the data can be written")
    assert sorted(os.listdir(data)) == ["shard_000000.bin", "shard_000001.bin"]  # no temporary file, no sidecar
    filler.unlink()
    assert run_main(build_index_main, [f"--data_dir={data}", "--max_seq_len=4"]) == 0
    assert len(load_or_build_sample_index(data, 4, 1000, log=lambda m: None)) == (300_000 - 1) // 4


def test_a_sample_index_overwritten_by_garbage_is_rebuilt(tmp_path):
    data = _shards(tmp_path / "data", [5000, 3000])
    first = load_or_build_sample_index(data, 16, 1000, log=lambda m: None).windows.copy()
    npy, _ = index_paths(data, 16)
    for garbage in (os.urandom(npy.stat().st_size), npy.read_bytes()[:128] + os.urandom(npy.stat().st_size - 128)):
        npy.write_bytes(garbage)  # the same size: only the fingerprint (mtime, hash) tells
        said = []
        again = load_or_build_sample_index(data, 16, 1000, log=said.append)
        assert len(said) == 2 and said[0].startswith(f"sample index {npy} is corrupted (it does not match its "
                                                     f"sidecar's size, mtime or hash"), said
        assert np.array_equal(again.windows, first)


def test_a_shard_truncated_after_its_index_was_built_is_named_before_training(tmp_path):
    data = _shards(tmp_path / "data", [5000, 3000])
    load_or_build_sample_index(data, 16, 1000, log=lambda m: None)
    shard = data / "shard_000000.bin"
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size // 2)
    with pytest.raises(ValueError, match=f"{shard} is truncated: .* Re-run `python -m data_preprocess.pretokenize`"):
        load_or_build_sample_index(data, 16, 1000, log=lambda m: None)


@needs_mount
def test_the_demo_data_on_a_full_disk_keeps_what_was_built(tmpfs, fake_corpus):
    cache = tmpfs(1) / "demo"
    cache.mkdir()
    filler = fill(cache.parent, leave=4 * 4096)  # the corpus fits, the tokenizer and the shards do not
    with pytest.raises(DiskFault) as info:
        demo.ensure_demo_data(str(cache), vocab_size=300, num_workers=1, log=lambda m: None)
    assert info.value.strerror == (f"no space left on device while writing the demo data to {cache}: free space there "
                                   f"(it takes about 200 MB) or train on your own --data_dir; the stages already "
                                   f"built are kept")
    assert (cache / demo.CORPUS_MARKER).is_file() and not (cache / demo.MARKER).exists()
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]
    filler.unlink()
    demo.ensure_demo_data(str(cache), vocab_size=300, num_workers=1, log=lambda m: None)
    assert (cache / demo.MARKER).is_file() and fake_corpus["corpus"] == 1  # the corpus was not built again


@needs_mount
def test_the_demo_corpus_writer_leaves_no_temporary_file(tmpfs):
    from data_preprocess.demo_corpus import build_demo_corpus

    out = tmpfs(1) / "corpus"
    with pytest.raises(OSError) as info:
        build_demo_corpus(str(out), shard_bytes=256 << 10, show_progress=False)
    assert info.value.errno == 28
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # whole shards only
