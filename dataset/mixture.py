"""A mix of corpora: its spec (--data_mix, --data_stages), parsed and checked, and its schedule over the sample stream.

Grammar (the values of two string keys of DataConfig, so a config file and the command line say the same):

    data_mix    = "NAME:WEIGHT:PATH,NAME:WEIGHT:PATH,..."           the mix from step 0
    data_stages = "STEP:NAME:WEIGHT[:PATH],...;STEP:NAME:WEIGHT..."  later mixes, each from optimizer step STEP on

NAME is a letter followed by letters, digits, '_', '-' or '.' (it names metrics: valid/NAME, tokens/NAME);
WEIGHT a positive decimal (weights are normalised per stage, exactly, as fractions); PATH a directory of .bin
shards, a raw .jsonl/.json/.parquet/.txt file or directory (pretokenized on first use), or demo:code / demo:prose
(the demo corpus's two halves). PATH may hold ':' but not ',' or ';'. A stage names a source of an earlier stage by
its NAME alone (a PATH given again must be the same) and adds a new source with NAME:WEIGHT:PATH; a source a stage
leaves out gets no sample in it and keeps its place for a later stage. STEPs are > 0 and increasing.

Schedule. Stage k starts at global sample s_k = STEP_k * gradient_accumulation_steps * batch_size (micro-batch
STEP_k * gradient_accumulation_steps, the first micro-batch of step STEP_k + 1). Within a stage the blend
(dataset/blend.py) picks the source of each sample; each source's count carries across stages, so a stage switch
neither repeats nor skips a sample of a source's epoch. `counts(n)` gives every source's count among the first n
samples in O(stages + blend seek), for any n.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from dataset.blend import Blend, integer_weights

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
MIX_FORM = "NAME:WEIGHT:PATH,NAME:WEIGHT:PATH,..."
STAGES_FORM = "STEP:NAME:WEIGHT[:PATH],...;STEP:..."


@dataclass(frozen=True)
class Stage:
    step: int  # optimizer steps before the stage: it trains steps step+1, step+2, ...
    weights: tuple[tuple[str, Fraction], ...]  # (source name, weight as given), in the order given

    def shares(self) -> dict[str, Fraction]:
        total = sum(w for _, w in self.weights)
        return {name: w / total for name, w in self.weights}


@dataclass(frozen=True)
class MixSpec:
    sources: tuple[tuple[str, str], ...]  # (name, path) of every source of every stage, in order of first use
    stages: tuple[Stage, ...]  # stages[0].step == 0

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.sources]

    def path(self, name: str) -> str:
        return dict(self.sources)[name]

    def with_paths(self, paths: dict[str, str]) -> "MixSpec":
        """The same mix with some sources' paths replaced (e.g. raw text by its pretokenized shards)."""
        return MixSpec(tuple((n, paths.get(n, p)) for n, p in self.sources), self.stages)

    def to_config(self) -> tuple[str, str]:
        """(data_mix, data_stages) strings that parse back to this spec."""
        first_use: dict[str, int] = {}
        for k, stage in enumerate(self.stages):
            for name, _ in stage.weights:
                first_use.setdefault(name, k)

        def entries(k: int, stage: Stage) -> str:
            return ",".join(f"{n}:{_decimal(w)}" + (f":{self.path(n)}" if first_use[n] == k else "")
                            for n, w in stage.weights)

        stages = ";".join(f"{s.step}:{entries(k, s)}" for k, s in enumerate(self.stages) if k > 0)
        return entries(0, self.stages[0]), stages


def _decimal(w: Fraction) -> str:
    """A weight as text that parses back to the same fraction: a plain decimal when it is one (0.6), else a/b."""
    d = w.denominator
    for f in (2, 5):
        while d % f == 0:
            d //= f
    if d != 1:
        return f"{w.numerator}/{w.denominator}"
    digits = 0
    while (w * 10 ** digits).denominator != 1:
        digits += 1
    return f"{float(w):.{digits}f}" if digits <= 15 else f"{w.numerator}/{w.denominator}"


def _weight(text: str, name: str, key: str) -> Fraction:
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--{key}: source {name!r} has weight {text!r}, not a number; write NAME:WEIGHT:PATH "
                         f"with a positive WEIGHT such as 0.3") from None
    if value <= 0:
        raise ValueError(f"--{key}: source {name!r} has weight {text.strip()}, but weights must be > 0; leave a source "
                         f"out of a stage (--data_stages) to give it no samples there")
    return value


def _entries(text: str, key: str, known: dict[str, str], need_path: bool) -> tuple[tuple[str, Fraction], ...]:
    """The (name, weight) entries of one stage; records new sources' paths in `known` (name -> path)."""
    out: list[tuple[str, Fraction]] = []
    for raw in text.split(","):
        parts = [p.strip() for p in raw.strip().split(":", 2)]
        if len(parts) < 2 or not parts[0]:
            form = MIX_FORM if key == "data_mix" else STAGES_FORM
            raise ValueError(f"--{key}: {raw.strip()!r} is not NAME:WEIGHT{':PATH' if need_path else '[:PATH]'}; "
                             f"the form is {form!r}")
        name = parts[0]
        if not NAME_RE.match(name):
            raise ValueError(f"--{key}: source name {name!r} must start with a letter and hold only letters, digits, "
                             f"'_', '-' or '.' (it names metrics such as valid/{name}); rename it")
        if any(name == n for n, _ in out):
            raise ValueError(f"--{key}: source name {name!r} appears twice in one mix; give each source its own name")
        weight = _weight(parts[1], name, key)
        path = parts[2] if len(parts) == 3 else ""
        if need_path and not path:
            raise ValueError(f"--{key}: source {name!r} has no PATH; write {name}:{parts[1]}:PATH")
        if name in known:
            if path and path != known[name]:
                raise ValueError(f"--{key}: source {name!r} is {known[name]} in an earlier stage and {path} here; one "
                                 f"name is one source: drop the PATH here or use a new name")
        elif not path:
            raise ValueError(f"--{key}: source {name!r} appears first here without a PATH; write "
                             f"{name}:{parts[1]}:PATH")
        elif path in known.values():
            other = next(n for n, p in known.items() if p == path)
            raise ValueError(f"--{key}: sources {other!r} and {name!r} both read {path}; one source per directory "
                             f"(give one name the combined weight)")
        else:
            known[name] = path
        out.append((name, weight))
    return tuple(out)


def parse_mix(data_mix: str, data_stages: str = "") -> MixSpec:
    """The MixSpec of the two strings (module docstring), or ValueError naming the mistake and the fix."""
    if not data_mix.strip():
        raise ValueError(f"--data_mix is empty; the form is {MIX_FORM!r}")
    known: dict[str, str] = {}
    stages = [Stage(0, _entries(data_mix, "data_mix", known, need_path=True))]
    for text in (s for s in data_stages.split(";") if s.strip()) if data_stages.strip() else ():
        step_text, colon, rest = text.strip().partition(":")
        try:
            step = int(step_text.strip())
        except ValueError:
            step = None
        if not colon or step is None:
            raise ValueError(f"--data_stages: stage {text.strip()!r} does not start with STEP: (an optimizer step); "
                             f"the form is {STAGES_FORM!r}")
        if step <= stages[-1].step:
            where = "step 0 is --data_mix's" if stages[-1].step == 0 else f"the stage before starts at step " \
                                                                         f"{stages[-1].step}"
            raise ValueError(f"--data_stages: the stage at step {step} is out of order ({where}); stages start at "
                             f"increasing steps > 0")
        stages.append(Stage(step, _entries(rest, "data_stages", known, need_path=False)))
    sources = tuple((name, known[name]) for name in known)
    return MixSpec(sources, tuple(stages))


def describe_shares(shares: dict[str, Fraction]) -> str:
    return ", ".join(f"{name} {float(s):.4g}" for name, s in shares.items())


class BlendSchedule:
    """Which source each global sample comes from, over every stage of a mix (module docstring).

    `samples_per_step` = gradient_accumulation_steps * batch_size (global). Sources are numbered in
    MixSpec.sources order; stage k's blend runs over its own sources only.
    """

    def __init__(self, spec: MixSpec, samples_per_step: int):
        self.spec = spec
        self.names = spec.names
        self.samples_per_step = samples_per_step
        index = {name: i for i, name in enumerate(self.names)}
        self.starts = [stage.step * samples_per_step for stage in spec.stages]
        self.shares = [stage.shares() for stage in spec.stages]
        self.members = [np.array([index[n] for n, _ in stage.weights], dtype=np.int64) for stage in spec.stages]
        blends: dict[tuple[int, ...], Blend] = {}  # stages with the same integer weights share one blend
        self.blends, self.exact = [], []
        for stage in spec.stages:
            p, q = integer_weights([w for _, w in stage.weights])
            self.blends.append(blends.setdefault(tuple(p), Blend(p)))
            self.exact.append([Fraction(x, q) for x in p] == list(stage.shares().values()))
        # every source's count at the start of each stage
        self.at_start = np.zeros((len(self.starts), len(self.names)), dtype=np.int64)
        for k in range(1, len(self.starts)):
            self.at_start[k] = self.at_start[k - 1]
            self.at_start[k, self.members[k - 1]] += self.blends[k - 1].counts(self.starts[k] - self.starts[k - 1])

    def stage_of(self, n: int) -> int:
        """The stage that sample n belongs to."""
        return bisect.bisect_right(self.starts, n) - 1

    def counts(self, n: int) -> np.ndarray:
        """int64 (sources,): each source's samples among the first n of the stream."""
        k = self.stage_of(max(n - 1, 0))
        out = self.at_start[k].copy()
        out[self.members[k]] += self.blends[k].counts(n - self.starts[k])
        return out

    def assign(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, ordinal) of each sample in [start, stop): its source and how many samples of that source come
        before it in the stream (the source's own running count, across stages)."""
        sources = np.empty(stop - start, dtype=np.int64)
        ordinals = np.empty(stop - start, dtype=np.int64)
        a = start
        while a < stop:
            k = self.stage_of(a)
            b = min(stop, self.starts[k + 1]) if k + 1 < len(self.starts) else stop
            local = self.members[k][self.blends[k].sources(a - self.starts[k], b - self.starts[k])]
            before = self.counts(a)
            seg = slice(a - start, b - start)
            sources[seg] = local
            for i in np.unique(local):
                at = np.flatnonzero(local == i)
                ordinals[seg][at] = before[i] + np.arange(len(at))
            a = b
        return sources, ordinals
