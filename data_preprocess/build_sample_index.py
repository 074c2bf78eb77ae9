"""Build (or refresh) a sample-index map: `python -m data_preprocess.build_sample_index --data_dir=DIR
--max_seq_len=L [--vocab_size=V] [--data_format=z2all|raw_uint16] [--rebuild]`.

Writes <data_dir>/sample_index_<L>.npy and its JSON sidecar (see dataset/sample_index.py). An up-to-date
map is kept; a missing or stale one (shards added, removed or changed) is rebuilt. train.py does the same
automatically, so running this ahead of time only moves the work (and the token-range scan) earlier.
"""
from __future__ import annotations

import sys
import time

from dataset.format import DATA_FORMATS
from dataset.sample_index import load_or_build_sample_index
from utils.cli import ArgumentParser, run_main


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="directory of .bin shards (or one .bin file)")
    p.add_argument("--max_seq_len", type=int, required=True, help="tokens per training sample (windows hold L+1)")
    p.add_argument("--vocab_size", type=int, default=None,
                   help="the model's vocab size: fail if a token id is >= it (default: each file's header)")
    p.add_argument("--data_format", default="z2all", choices=DATA_FORMATS)
    p.add_argument("--rebuild", action="store_true", help="rebuild even if the map is up to date")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    index = load_or_build_sample_index(a.data_dir, a.max_seq_len, a.vocab_size, a.data_format, rebuild=a.rebuild)
    result = {"windows": len(index), "tokens": int(sum(index.num_tokens)), "shards": len(index.shards),
              "seconds": round(time.perf_counter() - t0, 3)}
    print(f"sample index ready: {result['windows']} windows of {a.max_seq_len + 1} tokens, "
          f"{result['tokens']} tokens in {result['shards']} shard(s), {result['seconds']}s")
    return result


if __name__ == "__main__":
    sys.exit(run_main(main))
