"""Data-pipeline benchmark (CPU): prints one JSON line per case.

    python bench/data.py [--cases=pretokenize,index,loader] [--max_docs=N] [--workers=1,2]
                         [--tokens=1000000000] [--seq_len=2048] [--batch_size=8] [--tmp_dir=DIR]

- pretokenize: the demo corpus (built by data_preprocess.demo on first use; --max_docs takes a prefix)
  pretokenized with each worker count: tokens/s in total and per worker.
- index: --tokens random tokens written as synthetic .bin shards (np.random in chunks; 2 bytes/token, so
  the default needs ~2 GB of free disk under --tmp_dir), then the sample index built for --seq_len: time
  and peak memory (tracemalloc peak of Python and NumPy allocations; ru_maxrss is also given but counts
  the memmapped shard pages that the range scan touches, which the OS can drop at any time). Also the
  time to load the up-to-date map and to build another max_seq_len from the cached range scan.
- loader: PretrainDataset + ResumableBatchSampler + DataLoader over those shards at --seq_len and
  --batch_size, for each --loader_workers count: tokens/s delivered.
The load average is printed with each case: on a shared machine the wall-clock numbers depend on it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repo root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dataset.format import BinWriter  # noqa: E402
from dataset.sample_index import load_or_build_sample_index  # noqa: E402


def emit(record: dict) -> None:
    record["loadavg_1m"] = round(os.getloadavg()[0], 2)
    record["cpus"] = os.cpu_count()
    print(json.dumps(record), flush=True)


def bench_pretokenize(args, tmp: Path) -> None:
    from data_preprocess.demo import ensure_demo_data
    from data_preprocess.demo_corpus import build_demo_corpus  # noqa: F401  (fail early if absent)
    from data_preprocess.pretokenize import pretokenize
    from data_preprocess.readers import iter_all_documents, list_input_files

    demo = ensure_demo_data(args.cache_dir, args.vocab_size)
    corpus = str(Path(args.cache_dir) / "corpus")
    if args.max_docs:
        subset = tmp / "subset.jsonl"
        with open(subset, "w") as f:
            for i, doc in enumerate(iter_all_documents(list_input_files(corpus))):
                if i >= args.max_docs:
                    break
                f.write(json.dumps({"text": doc}) + "\n")
        corpus = str(subset)
    for workers in args.workers:
        c0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        s = pretokenize(corpus, demo.tokenizer_dir, str(tmp / f"pretok_w{workers}"), num_workers=workers,
                        overwrite=True, progress=False, log=lambda m: None)
        c1 = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        emit({"case": "pretokenize", "workers": workers, "documents": s["documents"], "tokens": s["tokens"],
              "seconds": round(s["seconds"], 2), "tokens_per_s": round(s["tokens_per_s"]),
              "tokens_per_s_per_worker": round(s["tokens_per_s"] / workers),
              "tokens_per_cpu_s": round(s["tokens"] / max(c1 - c0, 1e-9))})
        shutil.rmtree(tmp / f"pretok_w{workers}")


def write_synthetic(data: Path, tokens: int, shard_tokens: int, vocab: int, chunk: int = 1 << 24) -> None:
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    left, k = tokens, 0
    while left > 0:
        n = min(left, shard_tokens)
        with BinWriter(data / f"shard_{k:06d}.bin", vocab) as w:
            for c0 in range(0, n, chunk):
                w.write(rng.integers(0, vocab, size=min(chunk, n - c0), dtype=np.uint16))
        left, k = left - n, k + 1


def bench_index(args, data: Path) -> None:
    t0 = time.perf_counter()
    write_synthetic(data, args.tokens, args.shard_tokens, args.vocab_size_synthetic)
    emit({"case": "write_synthetic_shards", "tokens": args.tokens, "bytes": sum(p.stat().st_size for p in data.glob("*.bin")),
          "seconds": round(time.perf_counter() - t0, 2)})
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    idx = load_or_build_sample_index(data, args.seq_len, args.vocab_size_synthetic, log=lambda m: None)
    build_s = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    load_or_build_sample_index(data, args.seq_len, args.vocab_size_synthetic, log=lambda m: None)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    other = load_or_build_sample_index(data, args.seq_len // 2, args.vocab_size_synthetic, log=lambda m: None)
    other_s = time.perf_counter() - t0
    emit({"case": "index_build", "tokens": args.tokens, "shards": len(idx.shards), "seq_len": args.seq_len,
          "windows": len(idx), "build_seconds_incl_range_scan": round(build_s, 2),
          "peak_traced_mb": round(peak / 2**20, 1), "ru_maxrss_growth_mb": round((rss1 - rss0) / 1024, 1),
          "reload_up_to_date_seconds": round(load_s, 3),
          f"build_seq_len_{args.seq_len // 2}_cached_scan_seconds": round(other_s, 2), "other_windows": len(other)})


def bench_loader(args, data: Path) -> None:
    import torch
    from torch.utils.data import DataLoader

    from dataset.config import DataConfig
    from dataset.pretrain import PretrainDataset
    from dataset.sampler import ResumableBatchSampler

    torch.set_num_threads(1)
    ds = PretrainDataset(DataConfig(data_dir=str(data)), args.seq_len, args.vocab_size_synthetic, log=lambda m: None)
    for workers in args.loader_workers:
        sampler = ResumableBatchSampler(len(ds), args.batch_size, seed=0)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, pin_memory=False,
                            multiprocessing_context="fork" if workers else None)
        it = iter(loader)
        next(it)  # worker start-up is not throughput
        t0 = time.perf_counter()
        for _ in range(args.loader_batches):
            x, y = next(it)
        dt = time.perf_counter() - t0
        assert x.shape == (args.batch_size, args.seq_len) and x.dtype == torch.int64
        del it
        emit({"case": "loader", "num_workers": workers, "seq_len": args.seq_len, "batch_size": args.batch_size,
              "batches": args.loader_batches, "seconds": round(dt, 3),
              "tokens_per_s": round(args.loader_batches * args.batch_size * args.seq_len / dt),
              "batches_per_s": round(args.loader_batches / dt, 1)})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="pretokenize,index,loader")
    p.add_argument("--cache_dir", default="data/demo", help="demo data cache (built on first use)")
    p.add_argument("--vocab_size", type=int, default=4096, help="demo tokenizer vocab")
    p.add_argument("--max_docs", type=int, default=0, help="pretokenize only the first N demo documents (0: all)")
    p.add_argument("--workers", default="1,2", help="pretokenize worker counts")
    p.add_argument("--tokens", type=float, default=1e9, help="synthetic tokens for the index and loader cases")
    p.add_argument("--shard_tokens", type=float, default=1e8)
    p.add_argument("--vocab_size_synthetic", type=int, default=32000)
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--loader_batches", type=int, default=200)
    p.add_argument("--loader_workers", default="0,2")
    p.add_argument("--tmp_dir", default=None, help="where the synthetic shards go (default: the system temp dir)")
    a = p.parse_args(argv)
    a.workers = [int(w) for w in a.workers.split(",")]
    a.loader_workers = [int(w) for w in a.loader_workers.split(",")]
    a.tokens, a.shard_tokens = int(a.tokens), int(a.shard_tokens)
    cases = set(a.cases.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="z2all_bench_data_", dir=a.tmp_dir))
    try:
        if "pretokenize" in cases:
            bench_pretokenize(a, tmp)
        if cases & {"index", "loader"}:
            bench_index(a, tmp / "synthetic")
        if "loader" in cases:
            bench_loader(a, tmp / "synthetic")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
