"""Data-mixture benchmark (CPU): prints one JSON line per case.

    python bench/data_mix.py [--tokens=1e9,3e9,1e10] [--sources=10] [--seq_len=2048] [--batch_size=8]
                             [--loader_batches=400] [--train_batch_size=1] [--tmp_dir=DIR]
                             [--cases=write,index,blend,memory,loader,train]

For each total of --tokens: --sources synthetic sources of uneven sizes (source i holds (i + 1) / sum parts of the
tokens: 1:2:...:10) written with BinWriter as uint16 shards of --shard_tokens (random ids, 2 bytes a token: the
largest total needs that much free disk under --tmp_dir), then:
- write: the seconds to write them.
- index: each source's sample index built cold (the existing per-directory build, with its token-range scan, which
  reads every token once), then reloaded up to date.
- blend: the mix's side of start-up with the indexes up to date: every source's train and valid split, the
  BlendSchedule of two stages and the sampler, with decimal weights (a period of 100 samples) and with weights of
  seven significant digits (their exact period is too long: rounded to MAX_PERIOD, 2**17); then the seek to the
  end of a run of every window (state_at and the first micro-batch there).
- memory: a fresh process builds the data side exactly as train.py does before the model: the config through
  configurator.build_config, then TASKS["pretrain"]'s locate_data and build (MixPretrainTask: every source's train
  and valid split, the schedule, the sampler, the BatchStream), and takes 20 micro-batches; its peak anonymous memory
  (RssAnon, what it holds; sampled) and its peak RSS (VmHWM, which also counts the memmapped shard pages it touched;
  the kernel drops those at will), from /proc.
- loader: that BatchStream in one process (num_workers=0) at --seq_len and --batch_size: tokens/s, over
  --loader_batches micro-batches after 5 of warm-up.
- train: train.py itself on the mix (two stages) with a tiny model (2 layers of 64: 2M parameters, nearly all of
  them the 32000-token embedding) at --seq_len and --train_batch_size, 3 steps: the seconds to its start-up line
  (everything built, before the first step) and to its exit, and the peak RssAnon (sampled) and VmHWM of the whole
  run (the steps add the micro-batch's activations and its batch x seq x 32000 fp32 logits).
The load average goes with every line: on a shared machine the wall-clock numbers depend on it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repo root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dataset.format import BinWriter  # noqa: E402

VOCAB = 32000
DECIMAL = [0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03]  # period 100
DIGITS = [0.3141593, 0.2718282, 0.1414214, 0.1732051, 0.2236068, 0.0577216, 0.0693147, 0.0301030, 0.0477121,
          0.0845098]  # seven significant digits: their exact period is over MAX_PERIOD, so they are rounded


TINY_MODEL = ["--vocab_size=32000", "--hidden_dim=64", "--n_layers=2", "--n_heads=2", "--n_kv_heads=1",
              "--multiple_of=64", "--gradient_accumulation_steps=1", "--max_iters=3", "--log_interval=1",
              "--eval_interval=0", "--save_interval=1000", "--sample_tokens=0", "--tensorboard=false",
              "--warmup_iters=1", "--device=cpu"]


def emit(record: dict) -> None:
    record["loadavg_1m"] = round(os.getloadavg()[0], 2)
    record["cpus"] = os.cpu_count()
    print(json.dumps(record), flush=True)


def source_tokens(total: int, n: int) -> list[int]:
    parts = np.arange(1, n + 1)
    sizes = (total * parts // parts.sum()).astype(np.int64)
    sizes[-1] += total - sizes.sum()
    return [int(s) for s in sizes]


def write_sources(root: Path, total: int, n: int, shard_tokens: int, chunk: int = 1 << 24) -> list[Path]:
    """n sources of uneven sizes; the ids are a random block shifted per chunk (random enough, and fast)."""
    block = np.random.default_rng(0).integers(0, VOCAB, size=chunk, dtype=np.uint16)
    dirs, c = [], 0
    for i, size in enumerate(source_tokens(total, n)):
        d = root / f"src{i:02d}"
        d.mkdir(parents=True)
        left, k = size, 0
        while left > 0:
            m = min(left, shard_tokens)
            with BinWriter(d / f"shard_{k:06d}.bin", VOCAB) as w:
                for c0 in range(0, m, chunk):
                    w.write((block[:min(chunk, m - c0)].astype(np.uint32) + c) % VOCAB)
                    c += 1
            left, k = left - m, k + 1
        dirs.append(d)
    return dirs


def spec_strings(dirs: list[Path], weights: list[float], stage_step: int) -> tuple[str, str]:
    mix = ",".join(f"s{i}:{w}:{d}" for i, (d, w) in enumerate(zip(dirs, weights[:len(dirs)])))
    second = ",".join(f"s{i}:{w}" for i, w in enumerate(reversed(weights[:len(dirs)])))
    return mix, f"{stage_step}:{second}"


def build_data_side(dirs, weights, seq_len, batch_size, stage_step):
    """What MixPretrainTask builds before the model (its own functions): splits, schedule, sampler, stream."""
    import torch

    from dataset.config import DataConfig
    from dataset.loader import BatchStream, stack_windows
    from dataset.mixture import BlendSchedule, parse_mix
    from dataset.mixture_sampler import MixtureBatchSampler, MixtureDataset
    from tasks.pretrain_mix import source_datasets

    quiet = lambda m: None  # noqa: E731
    spec = parse_mix(*spec_strings(dirs, weights, stage_step))
    data = DataConfig(data_mix=spec.to_config()[0], data_seed=1234)
    t0 = time.perf_counter()
    train = source_datasets(spec, data, seq_len, VOCAB, "train", log=quiet)
    valid = source_datasets(spec, data, seq_len, VOCAB, "valid", log=quiet)
    t1 = time.perf_counter()
    schedule = BlendSchedule(spec, batch_size)  # gradient accumulation 1
    sampler = MixtureBatchSampler(schedule, [len(d) for d in train], batch_size, seed=1234, tokens_per_sample=seq_len,
                                  log=quiet)
    stream = BatchStream(MixtureDataset(train), sampler, stack_windows, torch.device("cpu"), prefetch=False)
    t2 = time.perf_counter()
    return stream, sampler, train, valid, {"splits_s": round(t1 - t0, 3), "blend_s": round(t2 - t1, 3)}


def bench_index(dirs, args, total) -> None:
    from dataset.sample_index import load_or_build_sample_index

    t0 = time.perf_counter()
    windows = sum(len(load_or_build_sample_index(d, args.seq_len, VOCAB, log=lambda m: None)) for d in dirs)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d in dirs:
        load_or_build_sample_index(d, args.seq_len, VOCAB, log=lambda m: None)
    emit({"case": "index", "tokens": total, "sources": len(dirs), "seq_len": args.seq_len, "windows": windows,
          "cold_build_s_incl_range_scan": round(cold, 2), "reload_up_to_date_s": round(time.perf_counter() - t0, 3)})


def bench_blend(dirs, args, total) -> None:
    import tasks.pretrain_mix  # noqa: F401  (imports are not start-up work of the data)

    for name, weights in (("decimal", DECIMAL), ("seven_digits", DIGITS)):
        t0 = time.perf_counter()
        stream, sampler, train, _, parts = build_data_side(dirs, weights, args.seq_len, args.batch_size, 1000)
        start_s = time.perf_counter() - t0
        last = sum(len(d) for d in train) // args.batch_size  # a run that reads every training window once
        t0 = time.perf_counter()
        state = sampler.state_at(last)
        stream.seek(last)
        next(stream)
        seek_s = time.perf_counter() - t0
        emit({"case": "blend", "weights": name, "tokens": total, "sources": len(dirs),
              "period": int(sampler.schedule.blends[0].q), "start_up_s": round(start_s, 3), **parts,
              "seek_to_micro_batch": last, "seek_and_first_batch_s": round(seek_s, 3),
              "epochs_at_seek": {k: v["epoch"] for k, v in list(state["sources"].items())[:3]}})


def train_argv(dirs, args, tmp: Path, batch_size: int) -> list[str]:
    mix, stages = spec_strings(dirs, DECIMAL, 2)
    return [f"--data_mix={mix}", f"--data_stages={stages}", f"--max_seq_len={args.seq_len}",
            f"--batch_size={batch_size}", f"--out_dir={tmp / 'run'}", *TINY_MODEL]


def memory_child(argv: list[str]) -> dict:
    """In this (fresh) process: train.py's data side for `argv` (the config and the task, no model), 20 micro-batches
    taken; /proc's figures."""
    import configurator
    from parallel.dist import init_distributed
    from tasks import TASKS

    cfg = configurator.build_config(argv)
    ctx = init_distributed(cfg.train.device)
    spec = TASKS[cfg.train.task_type]
    task = spec.build(cfg, ctx, None, spec.locate_data(cfg, ctx), None)
    for _ in range(20):
        next(task.stream)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: round(int(status[k].split()[0]) / 1024, 1) for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def bench_memory(dirs, args, total, tmp: Path) -> None:
    cmd = [sys.executable, __file__, "--memory_child", json.dumps(train_argv(dirs, args, tmp, args.batch_size))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    peak = _peak_of(proc, lambda line, _: lines.append(line))
    assert proc.returncode == 0, "".join(lines[-20:])
    out = json.loads(lines[-1])
    emit({"case": "memory", "tokens": total, "sources": len(dirs), "seq_len": args.seq_len,
          "batch_size": args.batch_size, "peak_rss_anon_mb_sampled": round(peak["RssAnon"], 1),
          **{f"end_{k}_mb": v for k, v in out.items()}})


def bench_loader(dirs, args, total) -> None:
    import torch

    torch.set_num_threads(1)
    stream, *_ = build_data_side(dirs, DECIMAL, args.seq_len, args.batch_size, 1000)
    for _ in range(5):
        next(stream)
    t0 = time.perf_counter()
    for _ in range(args.loader_batches):
        x, y = next(stream)
    dt = time.perf_counter() - t0
    assert x.shape == (args.batch_size, args.seq_len)
    emit({"case": "loader", "tokens": total, "sources": len(dirs), "num_workers": 0, "seq_len": args.seq_len,
          "batch_size": args.batch_size, "batches": args.loader_batches, "seconds": round(dt, 3),
          "tokens_per_s": round(args.loader_batches * args.batch_size * args.seq_len / dt)})


def _peak_of(proc: subprocess.Popen, on_line) -> dict:
    """Sample the child's RssAnon and VmHWM until it exits; on_line(line, peaks so far) sees its stdout lines."""
    import selectors

    status, peak = Path(f"/proc/{proc.pid}/status"), {"RssAnon": 0.0, "VmHWM": 0.0}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                key = line.split(":", 1)[0]
                if key in peak:
                    peak[key] = max(peak[key], int(line.split()[1]) / 1024)
        except OSError:
            pass
        for _ in sel.select(timeout=0.02):
            line = proc.stdout.readline()
            if line:
                on_line(line, dict(peak))
    for line in proc.stdout:
        on_line(line, dict(peak))
    return peak


def bench_train(dirs, args, total, tmp: Path) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "train.py"),
           *train_argv(dirs, args, tmp, args.train_batch_size)]
    t0, started, tail = time.perf_counter(), [], []

    def on_line(line: str, _) -> None:
        tail.append(line)
        if line.startswith("z2all pretrain:") and not started:  # describe_run: the run is built, no step yet
            started.append(time.perf_counter() - t0)

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = _peak_of(proc, on_line)
    assert proc.returncode == 0 and started, "".join(tail[-20:])
    emit({"case": "train", "tokens": total, "sources": len(dirs), "seq_len": args.seq_len,
          "batch_size": args.train_batch_size, "seconds_to_start_line": round(started[0], 1),
          "seconds_to_exit": round(time.perf_counter() - t0, 1), "peak_rss_anon_mb_sampled": round(peak["RssAnon"], 1),
          "vm_hwm_mb": round(peak["VmHWM"], 1)})
    shutil.rmtree(tmp / "run", ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", default="1e9,3e9,1e10", help="total synthetic tokens of each round, comma-separated")
    p.add_argument("--sources", type=int, default=10)
    p.add_argument("--shard_tokens", type=float, default=1e8)
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--loader_batches", type=int, default=400)
    p.add_argument("--train_batch_size", type=int, default=1, help="micro-batch of the train case (its logits: "
                   "batch x seq x 32000 fp32)")
    p.add_argument("--cases", default="write,index,blend,memory,loader,train")
    p.add_argument("--tmp_dir", default=None, help="where the synthetic shards go (default: the system temp dir)")
    p.add_argument("--memory_child", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.memory_child:
        print(json.dumps(memory_child(json.loads(a.memory_child))), flush=True)
        return
    cases = set(a.cases.split(","))
    for total in (int(float(t)) for t in a.tokens.split(",")):
        tmp = Path(tempfile.mkdtemp(prefix="z2all_bench_mix_", dir=a.tmp_dir))
        try:
            t0 = time.perf_counter()
            dirs = write_sources(tmp, total, a.sources, int(a.shard_tokens))
            if "write" in cases:
                emit({"case": "write", "tokens": total, "sources": a.sources,
                      "seconds": round(time.perf_counter() - t0, 1),
                      "bytes": sum(f.stat().st_size for d in dirs for f in d.glob("*.bin"))})
            bench_index(dirs, a, total)  # always: the other cases need the indexes
            for case, fn in (("blend", bench_blend), ("loader", bench_loader)):
                if case in cases:
                    fn(dirs, a, total)
            for case, fn in (("memory", bench_memory), ("train", bench_train)):
                if case in cases:
                    fn(dirs, a, total, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
