"""Pretraining on a mix of corpora (--data_mix, --data_stages; dataset/mixture.py has the grammar).

- `locate_mix`: every source resolved to a directory of .bin shards (demo:code / demo:prose built on first use, raw
  text pretokenized on first use beside it into <PATH>.z2all-pretrain/), and the tokenizers compared: the
  sources must share one tokenizer (their tokenizer/ files, and the shards' vocabulary).
- `MixPretrainTask`: the blended stream (dataset/mixture_sampler.py) through the same BatchStream, loss and sample
  as PretrainTask; each source holds out --valid_ratio of its own windows, and eval reports valid/NAME for every
  source and, as valid_loss, their mean weighted by the mix of the last step trained.
- `data_plan`: what train.py --dry_run prints: each source's windows and tokens, and per stage and over the run
  the samples, tokens, share and epochs that --max_iters implies.
"""
from __future__ import annotations

import dataclasses
import os
from fractions import Fraction

import numpy as np
import torch

from dataset.blend import MAX_PERIOD
from dataset.config import DataConfig
from dataset.loader import BatchStream, stack_windows
from dataset.mixture import BlendSchedule, MixSpec, Stage, describe_shares, parse_mix
from dataset.mixture_sampler import MixtureBatchSampler, MixtureDataset
from dataset.pretrain import PretrainDataset
from dataset.sample_index import list_shards
from tasks.base import TaskInputs
from tasks.config import TrainConfig
from tasks.pretrain import PretrainTask, locate_data
from utils.logging import print0

DEMO_PREFIX = "demo:"
RAW_SUFFIX = ".z2all-pretrain"  # <PATH>.z2all-pretrain/: a raw source's pretokenized shards


def _error(name: str, text: str) -> ValueError:
    return ValueError(f"--data_mix: source {name!r}: {text}")


def _kind(name: str, path: str) -> str:
    """'shards' (a .bin file or a directory with .bin shards) or 'raw' (text to pretokenize); ValueError else."""
    from data_preprocess.readers import SUPPORTED_SUFFIXES, list_input_files

    if not os.path.exists(path):
        raise _error(name, f"{path} does not exist; give a directory of .bin shards (python -m "
                           f"data_preprocess.pretokenize --out_dir=DIR) or a .jsonl/.json/.parquet/.txt file or "
                           f"directory")
    if os.path.isfile(path):
        if path.endswith(".bin"):
            return "shards"
        if path.endswith(SUPPORTED_SUFFIXES):
            return "raw"
        raise _error(name, f"{path} is neither a .bin shard nor a {'/'.join(SUPPORTED_SUFFIXES)} file")
    if any(p.endswith(".bin") for p in os.listdir(path)):
        return "shards"
    try:
        list_input_files(path)
    except ValueError:
        raise _error(name, f"{path} is empty: it holds no .bin shards and no {'/'.join(SUPPORTED_SUFFIXES)} files "
                           f"to pretokenize; point it at the data, or drop the source") from None
    return "raw"


def _tokenizer_of(path: str) -> str:
    """The tokenizer/ that data_preprocess.pretokenize copies beside its shards, or ""."""
    base = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    tok = os.path.join(base, "tokenizer")
    return tok if os.path.isdir(tok) else ""


def _check_tokenizers(tokenizers: dict[str, str]) -> None:
    """All the named tokenizer dirs (source name or --tokenizer_dir -> dir) must hold the same tokenizer files."""
    from data_preprocess.pretokenize_sft import tokenizer_hash

    hashes = {who: tokenizer_hash(tok) for who, tok in tokenizers.items()}
    first = next(iter(hashes))
    for who, h in hashes.items():
        if h != hashes[first]:
            raise ValueError(f"--data_mix: {_who(first)} and {_who(who)} were tokenized with different tokenizers "
                             f"({tokenizers[first]} and {tokenizers[who]} differ): pretokenize every source with one "
                             f"tokenizer (python -m data_preprocess.pretokenize --tokenizer_dir=TOK)")


def _who(key: str) -> str:
    return key if key.startswith("--") else f"source {key!r}"


def _demo_paths(spec: MixSpec, ctx) -> dict[str, str]:
    """Build (rank 0 first) and return the demo sources the spec names (demo:code, demo:prose)."""
    wanted = {name: path[len(DEMO_PREFIX):] for name, path in spec.sources if path.startswith(DEMO_PREFIX)}
    if not wanted:
        return {}
    from data_preprocess.demo import MIX_KINDS, ensure_demo_mix

    for name, kind in wanted.items():
        if kind not in MIX_KINDS:
            raise _error(name, f"{DEMO_PREFIX}{kind} is not a demo source; the demo has "
                               f"{', '.join(DEMO_PREFIX + k for k in MIX_KINDS)}")
    if ctx.is_main:
        ensure_demo_mix()  # rank 0 builds; the others wait, then reuse the finished build
    ctx.barrier()
    dirs = ensure_demo_mix(log=lambda m: None)
    return {name: dirs[kind] for name, kind in wanted.items()}


def locate_mix(data: DataConfig, ctx) -> DataConfig:
    """`data` with every source of its mix resolved to a directory of shards and tokenizer_dir set (module docstring).

    The cheap checks (paths, emptiness, tokenizers) run on every rank before any build; rank 0 then pretokenizes the
    raw sources while the others wait.
    """
    spec = parse_mix(data.data_mix, data.data_stages)
    paths = _demo_paths(spec, ctx)
    kinds = {name: "shards" if name in paths else _kind(name, path) for name, path in spec.sources}
    paths.update({name: path for name, path in spec.sources if kinds[name] == "shards" and name not in paths})
    tokenizers = {name: tok for name, path in paths.items() if (tok := _tokenizer_of(path))}
    if data.tokenizer_dir:
        if not os.path.isdir(data.tokenizer_dir):
            raise ValueError(f"--tokenizer_dir={data.tokenizer_dir} does not exist; pass the tokenizer of the sources")
        tokenizers = {"--tokenizer_dir": data.tokenizer_dir, **tokenizers}
    if len(tokenizers) > 1:
        _check_tokenizers(tokenizers)
    tok = next(iter(tokenizers.values()), "")
    raw = [name for name, kind in kinds.items() if kind == "raw"]
    if raw and not tok:
        raise _error(raw[0], f"{spec.path(raw[0])} is raw text and no tokenizer is known to pretokenize it: pass "
                             f"--tokenizer_dir=TOK (or add a source of .bin shards with its tokenizer/)")
    if raw:
        from data_preprocess.pretokenize import ensure_pretokenized

        def build(log) -> dict[str, str]:
            return {name: ensure_pretokenized(spec.path(name), tok, spec.path(name).rstrip(os.sep) + RAW_SUFFIX,
                                              num_workers=max(1, data.num_workers), log=log) for name in raw}

        if ctx.is_main:
            build(print)
        ctx.barrier()
        paths.update(build(lambda m: None))
    data_mix, data_stages = spec.with_paths(paths).to_config()
    return dataclasses.replace(data, data_mix=data_mix, data_stages=data_stages, tokenizer_dir=tok)


def source_datasets(spec: MixSpec, data: DataConfig, max_seq_len: int, vocab_size: int, split: str,
                    log=print) -> list[PretrainDataset]:
    """Each source's `split` windows (its sample index built when missing or stale); errors name the source."""
    out = []
    for name, path in spec.sources:
        one = dataclasses.replace(data, data_dir=path, valid_data_dir="", data_mix="", data_stages="")
        try:
            out.append(PretrainDataset(one, max_seq_len, vocab_size, split=split, log=log))
        except ValueError as e:
            raise _error(name, str(e)) from None
    return out


def _check_vocabularies(spec: MixSpec) -> None:
    """Shards written for different vocabularies cannot share one tokenizer (their headers say so)."""
    from dataset.format import read_header

    first: tuple[str, int] | None = None
    for name, path in spec.sources:
        vocab = read_header(list_shards(path)[0])["vocab_size"]
        if first is None:
            first = (name, vocab)
        elif vocab != first[1]:
            raise ValueError(f"--data_mix: sources {first[0]!r} (vocabulary {first[1]}) and {name!r} (vocabulary "
                             f"{vocab}) were tokenized with different tokenizers: pretokenize every source with one")


class MixPretrainTask(PretrainTask):
    """Pretraining on a mix: PretrainTask's loss, tokens_in and sample over a blended stream (module docstring).
    `data` comes from locate_mix."""

    def __init__(self, inputs: TaskInputs):
        train, data, ctx = inputs.train, inputs.data, inputs.ctx
        max_seq_len, vocab_size = inputs.model.max_seq_len, inputs.model.vocab_size
        self.cfg, self.ctx, self.tokenizer = train, ctx, inputs.tokenizer
        self.seq_len = max_seq_len
        self.spec = parse_mix(data.data_mix, data.data_stages)
        if data.data_format == "z2all":
            _check_vocabularies(self.spec)
        if ctx.is_main:  # rank 0 builds or refreshes the sample indexes; the others then read them
            source_datasets(self.spec, data, max_seq_len, vocab_size, "train")
        ctx.barrier()
        quiet = lambda m: None  # noqa: E731 - rank 0 already said what it built
        train_sets = source_datasets(self.spec, data, max_seq_len, vocab_size, "train", log=quiet)
        self.valid_sets = source_datasets(self.spec, data, max_seq_len, vocab_size, "valid", log=quiet) \
            if train.eval_interval > 0 and train.eval_iters > 0 else None
        self.schedule = BlendSchedule(self.spec, train.gradient_accumulation_steps * train.batch_size)
        sampler = MixtureBatchSampler(self.schedule, [len(d) for d in train_sets], train.batch_size, ctx.rank,
                                      ctx.world_size, data.data_seed, max_seq_len, log=print)
        self.stream = BatchStream.from_config(MixtureDataset(train_sets), sampler, stack_windows, ctx.device, data)
        print0(describe_mix(self.spec, self.schedule, train_sets), rank=ctx.rank)

    def evaluate(self, model) -> dict[str, float]:
        """valid/NAME: the mean loss over the first eval_iters * batch_size held-out windows of each source, split
        across the ranks (the same windows and means for any number of ranks); valid_loss: their mean weighted by
        the mix of the last step trained."""
        if self.valid_sets is None:
            return {}
        b, count = self.cfg.batch_size, self.cfg.eval_iters * self.cfg.batch_size
        mine = list(range(self.ctx.rank, count, self.ctx.world_size))
        sums = torch.zeros(len(self.valid_sets), device=self.ctx.device)
        for i, ds in enumerate(self.valid_sets):
            for s in range(0, len(mine), b):
                x, y = stack_windows([ds[j % len(ds)] for j in mine[s:s + b]])
                sums[i] += model(x.to(self.ctx.device), targets=y.to(self.ctx.device),
                                 loss_reduction="sum").loss.float() / self.seq_len
        if self.ctx.world_size > 1:
            torch.distributed.all_reduce(sums, group=self.ctx.group)
        losses = (sums / count).tolist()
        consumed = self.stream.consumed_micro_batches
        k = self.schedule.stage_of(max(consumed * self.cfg.batch_size - 1, 0))
        shares = self.schedule.shares[k]
        out = {"valid_loss": float(sum(float(shares[n]) * losses[i] for i, n in enumerate(self.schedule.names)
                                       if n in shares))}
        out.update({f"valid/{name}": loss for name, loss in zip(self.schedule.names, losses)})
        return out


def describe_mix(spec: MixSpec, schedule: BlendSchedule, train_sets: list[PretrainDataset]) -> str:
    """The start-up lines of a mix: each source's tokens and windows, and each stage's normalised weights."""
    lines = [f"data mix: {len(spec.sources)} source(s), {len(spec.stages)} stage(s); windows of "
             f"{train_sets[0].max_seq_len + 1} tokens"]
    for (name, path), ds in zip(spec.sources, train_sets):
        lines.append(f"  {name}: {int(ds.shard_tokens.sum()):,} tokens, {len(ds.windows):,} windows "
                     f"({len(ds):,} for training) in {path}")
    for k, stage in enumerate(spec.stages):
        rounded = "" if schedule.exact[k] else f" (rounded to multiples of 1/{MAX_PERIOD}: {_fractions(schedule, k)})"
        lines.append(f"  from step {stage.step}: {describe_shares(schedule.shares[k])}{rounded}")
    return "\n".join(lines)


def plan_run(cfg, ctx) -> str:
    """train.py --dry_run: locate the data of cfg (building what is missing in the data directories, never in
    out_dir) and return its plan (data_plan). --data_dir is planned as a one-source mix named 'data'."""
    t, max_seq_len, vocab_size = cfg.train, cfg.model.max_seq_len, cfg.model.vocab_size
    if cfg.data.data_mix:
        data = locate_mix(cfg.data, ctx)
        spec = parse_mix(data.data_mix, data.data_stages)
        train_sets = source_datasets(spec, data, max_seq_len, vocab_size, "train")
        return data_plan(spec, train_sets, [len(d) for d in train_sets], t, max_seq_len)
    data = locate_data(cfg.data, ctx, t.init_from)
    spec = MixSpec((("data", data.data_dir),), (Stage(0, (("data", Fraction(1)),)),))
    ds = PretrainDataset(data, max_seq_len, vocab_size, split="train")
    # one directory's sampler (ResumableBatchSampler) drops each epoch's last partial micro-batch
    return data_plan(spec, [ds], [len(ds) // t.batch_size * t.batch_size], t, max_seq_len)


def _fractions(schedule: BlendSchedule, k: int) -> str:
    blend = schedule.blends[k]
    return ", ".join(f"{n} {p}/{blend.q}" for (n, _), p in zip(schedule.spec.stages[k].weights, blend.p.tolist()))


def data_plan(spec: MixSpec, train_sets: list[PretrainDataset], epoch_sizes: list[int], t: TrainConfig,
              max_seq_len: int) -> str:
    """--dry_run: for the mix and the budget of --max_iters steps, each source's tokens, share and epochs (samples
    over its `epoch_sizes`), per stage and over the run; epochs > 1 mean the source is read several times."""
    schedule = BlendSchedule(spec, t.gradient_accumulation_steps * t.batch_size)
    per_step = schedule.samples_per_step
    total = t.max_iters * per_step
    lines = [describe_mix(spec, schedule, train_sets),
             f"budget: {t.max_iters:,} steps x {per_step:,} samples x {max_seq_len:,} tokens = "
             f"{total * max_seq_len:,} tokens"]
    sizes = np.array(epoch_sizes, dtype=np.int64)
    bounds = [min(s, total) for s in schedule.starts] + [total]
    for k, stage in enumerate(spec.stages):
        a, b = bounds[k], bounds[k + 1]
        if a >= b:
            lines.append(f"  stage from step {stage.step}: not reached within --max_iters={t.max_iters}")
            continue
        got = schedule.counts(b) - schedule.counts(a)
        lines.append(f"  stage from step {stage.step} (steps {a // per_step + 1}-{b // per_step}): "
                     + _plan_row(spec.names, got, sizes, max_seq_len, only=schedule.shares[k]))
    counts = schedule.counts(total)
    lines.append("  the whole run: " + _plan_row(spec.names, counts, sizes, max_seq_len))
    heavy = [f"{n} ({c / w:.2f} epochs)" for n, c, w in zip(spec.names, counts, sizes) if c > w]
    if heavy:
        lines.append(f"  read more than once: {', '.join(heavy)}; lower its weight or --max_iters, or add data")
    return "\n".join(lines)


def _plan_row(names: list[str], counts: np.ndarray, sizes: np.ndarray, max_seq_len: int,
              only: dict[str, Fraction] | None = None) -> str:
    total = max(int(counts.sum()), 1)
    cells = [f"{n} {int(c) * max_seq_len:,} tokens ({int(c) / total:.1%}, {int(c) / int(w):.3f} epochs)"
             for n, c, w in zip(names, counts, sizes) if only is None or n in only]
    return "; ".join(cells)
