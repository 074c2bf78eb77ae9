"""Real train.py runs for tests: a tiny config on synthetic data, losses from metrics.jsonl, process control."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dataset.format import write_bin
from tests.conftest import ROOT
from utils.proctree import descendants

VOCAB = 128
TINY = """
vocab_size = 128
hidden_dim = 32
n_layers = 2
n_heads = 2
n_kv_heads = 1
max_seq_len = 16
multiple_of = 16
batch_size = 4
gradient_accumulation_steps = 2
max_iters = 8
eval_interval = 4
eval_iters = 2
log_interval = 1
save_interval = 2
warmup_iters = 2
learning_rate = 1e-2
min_lr = 1e-3
tensorboard = False
sample_tokens = 0
attention_dropout = 0.1
residual_dropout = 0.1
"""


def signal_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send sig to pid and everything below it; the tree is read first, so no child escapes by a late fork of
    its parent (except one forked after the read: a worker spawning while it is killed)."""
    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def make_run(tmp_path, name="run"):
    """A synthetic data dir (a learnable repeating pattern), a tiny config file, and an out_dir path."""
    data = tmp_path / "data"
    if not data.exists():
        data.mkdir()
        rng = np.random.default_rng(0)
        tokens = np.concatenate([(np.arange(40) * k) % VOCAB for k in rng.integers(1, 7, size=200)])
        write_bin(data / "shard_000.bin", tokens.astype(np.uint16), VOCAB, num_docs=200)
        (tmp_path / "tiny.py").write_text(TINY)
    return str(tmp_path / "tiny.py"), [f"--data_dir={data}", f"--out_dir={tmp_path / name}"], tmp_path / name


MIX = "a:0.7:{root}/a,b:0.3:{root}/b"  # a is small (18 training windows of 17 tokens): it runs through epochs
STAGES = "7:a:1,b:3"  # the stage switch of the mix runs: after step 7 of 14


def make_mix_run(tmp_path, name="run"):
    """Two synthetic sources (a small, b larger, different patterns) for the TINY config: (config file, argv with
    --data_mix, --data_stages and --out_dir, out_dir)."""
    root = tmp_path / "mix"
    if not root.exists():
        rng = np.random.default_rng(1)
        for src, docs, ks in (("a", 8, (1, 4)), ("b", 90, (4, 8))):
            (root / src).mkdir(parents=True)
            tokens = np.concatenate([(np.arange(40) * k + src.encode()[0]) % VOCAB for k in rng.integers(*ks, docs)])
            write_bin(root / src / "shard_000.bin", tokens.astype(np.uint16), VOCAB, num_docs=docs)
        (tmp_path / "tiny.py").write_text(TINY)
    return (str(tmp_path / "tiny.py"), [f"--data_mix={MIX.format(root=root)}", f"--data_stages={STAGES}",
                                        f"--out_dir={tmp_path / name}"], tmp_path / name)


def read_losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return [(r["iter"], r["loss"]) for r in recs if "loss" in r]


def run_cli(args, timeout=240, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


def kill_when(proc, out_dir, min_iter, timeout=180):
    """SIGKILL the run's whole process group once metrics.jsonl shows min_iter."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it was killed: {proc.communicate()}")
        try:
            if max((i for i, _ in read_losses(out_dir)), default=0) >= min_iter:
                break
        except (FileNotFoundError, json.JSONDecodeError, ValueError):
            pass
        time.sleep(0.05)
    kill_run(proc)


def kill_run(proc) -> None:
    """SIGKILL a run started by start(): its process group and every process below it (torchrun's workers live
    in sessions of their own and outlive a killed agent otherwise)."""
    signal_tree(proc.pid, signal.SIGKILL)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def start(cmd):
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def command(nproc, args):
    if nproc == 1:
        return [sys.executable, os.path.join(ROOT, "train.py"), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            os.path.join(ROOT, "train.py"), *args]


def latest_step(out):
    root = out / "ckpt"
    steps = [int(p[5:]) for p in os.listdir(root) if p.startswith("step_") and (root / p / "COMPLETE").exists()] \
        if root.is_dir() else []
    return max(steps, default=0)


def kill_after_checkpoint(proc, out, step, timeout=180):
    """SIGKILL the run's process group once it has published a complete checkpoint at >= step.

    Waiting for a checkpoint (not a log line) makes sure every resumed process writes one of its own before
    it dies: the next resume then starts from what a resumed process saved."""
    deadline = time.time() + timeout
    while latest_step(out) < step:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it was killed: {proc.communicate()[1][-3000:]}")
        if time.time() > deadline:
            break
        time.sleep(0.02)
    kill_run(proc)
