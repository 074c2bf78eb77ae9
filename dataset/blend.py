"""The blend of a mix: which source each sample of the stream comes from, with exact proportions at every prefix.

Weights are rationals p_i / Q (integers p_i >= 1 summing to Q). The blend is the sequence s(0), s(1), ... of
source ids, and c_i(n) counts source i among the first n samples. It satisfies the quota property at every prefix:

    floor(p_i * n / Q) <= c_i(n) <= ceil(p_i * n / Q)      for every source i and every n >= 0,

so each source is always strictly within one sample of its share of n (and exactly on it at multiples of Q).

How. The m-th sample of source i (m = 1, 2, ...) may sit at positions [floor((m-1) Q / p_i), ceil(m Q / p_i) - 1]
(0-based): any earlier and c_i would exceed its upper quota, any later and it would fall below its lower quota.
Each position takes one sample, and at each position the blend takes, among the sources whose next sample may
already be placed, the one whose deadline comes first (ties: the lower source id). That is earliest-deadline-
first scheduling of unit jobs; it meets every deadline whenever some assignment does (the classic exchange
argument), and one does: the samples whose window lies inside [a, b] number at most
sum_i ((b - a + 1) p_i / Q) = b - a + 1 (Hall's condition). A source's next sample is always available: by position
n, sum_i ceil((n + 1) p_i / Q) >= n + 1 samples have been released.

Why not Megatron's greedy (the source with the largest deficit w_i (n + 1) - c_i(n) next)? It keeps most
mixes within one sample but not all: with weights 7:51:3:53:19:1 it drifts 1.02 samples from a share
(tests/unit/dataset/test_blend.py shows it). The deadline rule carries the guarantee.

Seeking. At n = Q every count is exactly p_i and nothing is pending, so the blend is periodic with period Q. One
period is computed once (`_edf_period`, O(Q log k)), stored as one byte per position, with the counts at every
CHECKPOINT-th position; c_i(n) is then (n // Q) p_i + a checkpoint + a bincount of at most CHECKPOINT entries: the
position of every source at any sample n costs O(CHECKPOINT + k), whatever n is, and nothing grows with the run.
Q is bounded by MAX_PERIOD (`integer_weights` rounds weights whose exact common denominator is larger).
"""
from __future__ import annotations

import heapq
from fractions import Fraction
from math import lcm

import numpy as np

# The longest period kept exact: weights needing more are rounded to multiples of 1/MAX_PERIOD (shares move by less
# than 1e-5). It bounds the one-period build, a Python loop of about 3 us a position on an idle core (0.4 s).
MAX_PERIOD = 1 << 17
CHECKPOINT = 1024  # positions between stored counts: a seek scans at most this many bytes


def integer_weights(weights: list[Fraction]) -> tuple[list[int], int]:
    """(p, Q): integers p_i >= 1 with sum Q, p_i / Q the normalised weights.

    Exact when the normalised weights' common denominator is at most MAX_PERIOD (any weights written with a few
    decimals: 0.6/0.3/0.1 gives Q = 10, 1:1:1 gives Q = 3). Otherwise each share is rounded to a multiple of
    1 / MAX_PERIOD by largest remainders (ties: the lower index), every source keeping at least one part, so
    the shares move by less than 1e-5 and still sum to one.
    """
    if not weights or any(w <= 0 for w in weights):
        raise ValueError(f"weights must be positive, got {[str(w) for w in weights]}")
    total = sum(weights)
    shares = [w / total for w in weights]
    q = lcm(*(s.denominator for s in shares))
    if q <= MAX_PERIOD:
        return [int(s * q) for s in shares], q
    if len(shares) > MAX_PERIOD:
        raise ValueError(f"a mix of {len(shares)} sources is more than {MAX_PERIOD} allows")
    q = MAX_PERIOD
    exact = [s * q for s in shares]
    parts = [max(1, int(e)) for e in exact]
    left = q - sum(parts)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    step = 1 if left > 0 else -1
    while left:  # hand the remaining parts out (or take the extra ones back) by remainder
        for i in order if step > 0 else reversed(order):
            if left == 0:
                break
            if step < 0 and parts[i] == 1:
                continue
            parts[i] += step
            left -= step
    return parts, q


def _edf_period(p: list[int]) -> np.ndarray:
    """One period (Q = sum(p) positions) of the earliest-deadline-first blend (module docstring)."""
    q, k = sum(p), len(p)
    out = np.empty(q, dtype=np.uint8 if k <= 256 else np.uint16)
    counts = [0] * k
    ready: list[tuple[int, int]] = []  # (deadline, source) of each source whose next sample may be placed now
    waiting: list[tuple[int, int]] = []  # (release, source) of the others
    for i in range(k):
        heapq.heappush(ready, ((q - 1) // p[i], i))  # m = 1: released at 0, deadline ceil(Q / p_i) - 1
    for n in range(q):
        while waiting and waiting[0][0] <= n:
            _, i = heapq.heappop(waiting)
            heapq.heappush(ready, (((counts[i] + 1) * q - 1) // p[i], i))
        deadline, i = heapq.heappop(ready)
        assert deadline >= n, "the deadline schedule missed a deadline (the quota argument says it cannot)"
        out[n] = i
        counts[i] += 1
        if counts[i] < p[i]:
            release = counts[i] * q // p[i]
            if release <= n + 1:
                heapq.heappush(ready, (((counts[i] + 1) * q - 1) // p[i], i))
            else:
                heapq.heappush(waiting, (release, i))
    assert counts == p, "one period must hold exactly p_i samples of each source"
    return out


class Blend:
    """The periodic blend of sources with integer weights p (module docstring): the source of each sample and the
    count of each source among the first n samples, for any n."""

    def __init__(self, p: list[int]):
        if not p or any(int(x) < 1 for x in p):
            raise ValueError(f"integer weights must be >= 1, got {p}")
        self.p = np.asarray(p, dtype=np.int64)
        self.q = int(self.p.sum())
        self.k = len(p)
        self.period = _edf_period([int(x) for x in p])
        # counts of each source among the first j * CHECKPOINT positions of the period, j = 0 .. Q // CHECKPOINT
        marks = np.arange(0, self.q + 1, CHECKPOINT)
        self._marks = np.zeros((len(marks), self.k), dtype=np.int64)
        for i in range(self.k):
            cum = np.concatenate(([0], np.cumsum(self.period == i, dtype=np.int64)))
            self._marks[:, i] = cum[marks]

    def counts(self, n: int) -> np.ndarray:
        """int64 (k,): the samples of each source among the first n."""
        if n < 0:
            raise ValueError(f"a sample count must be >= 0, got {n}")
        cycles, r = divmod(int(n), self.q)
        base = r // CHECKPOINT
        within = np.bincount(self.period[base * CHECKPOINT:r], minlength=self.k)
        return cycles * self.p + self._marks[base] + within

    def sources(self, start: int, stop: int) -> np.ndarray:
        """int64 (stop - start,): the source of each sample in [start, stop)."""
        return self.period[np.arange(start, stop, dtype=np.int64) % self.q].astype(np.int64)
