"""The blend (dataset/blend.py): within one sample of every share at every prefix, periodic seeks equal to a
brute-force schedule, and why not the largest-deficit greedy."""
import random
from fractions import Fraction

import numpy as np
import pytest

from dataset.blend import CHECKPOINT, MAX_PERIOD, Blend, integer_weights

UNEVEN = [[7, 3], [1, 1, 1], [50, 30, 15, 5], [7, 51, 3, 53, 19], [1, 2, 3, 4, 1000], [97, 89, 83, 79, 73]]


def brute_force_edf(p: list[int], n: int) -> list[int]:
    """The schedule by its definition, with no heap, no period and no checkpoint: at each position, among the sources
    whose next sample may be placed (count c with floor(c Q / p) <= position), the earliest deadline
    ceil((c + 1) Q / p) - 1, ties to the lower index."""
    q, counts, out = sum(p), [0] * len(p), []
    for pos in range(n):
        ready = [(-(-(counts[i] + 1) * q // p[i]) - 1, i) for i in range(len(p)) if counts[i] * q // p[i] <= pos]
        _, i = min(ready)
        counts[i] += 1
        out.append(i)
    return out


def largest_deficit_greedy(p: list[int], n: int) -> float:
    """Megatron-style greedy (the source with the largest w_i (n + 1) - c_i next): its worst distance to a share."""
    q, counts, worst = sum(p), [0] * len(p), 0.0
    for pos in range(n):
        i = max(range(len(p)), key=lambda j: (p[j] * (pos + 1) - q * counts[j], -j))
        counts[i] += 1
        worst = max(worst, max(abs(q * counts[j] - p[j] * (pos + 1)) / q for j in range(len(p))))
    return worst


def quota_ok(p: list[int], n: np.ndarray, counts: np.ndarray) -> bool:
    """floor(p_i n / Q) <= c_i(n) <= ceil(p_i n / Q): strictly within one sample of the share."""
    q = sum(p)
    lo = (np.outer(n, p)) // q
    hi = -((-np.outer(n, p)) // q)
    return bool(((counts >= lo) & (counts <= hi)).all())


@pytest.mark.parametrize("p", UNEVEN, ids=lambda p: ":".join(map(str, p)))
def test_every_prefix_is_within_one_sample_of_its_share(p):
    blend = Blend(p)
    n = np.arange(0, 3 * blend.q + 1)
    cum = np.zeros((len(n), len(p)), dtype=np.int64)
    seq = np.concatenate([blend.period] * 3)
    for i in range(len(p)):
        cum[1:, i] = np.cumsum(seq == i)
    assert quota_ok(p, n, cum)
    far = np.array(random.Random(0).sample(range(10 ** 12), 200), dtype=np.int64)
    assert quota_ok(p, far, np.stack([blend.counts(int(x)) for x in far]))


@pytest.mark.parametrize("p", UNEVEN, ids=lambda p: ":".join(map(str, p)))
def test_seeking_equals_the_brute_force_schedule(p):
    blend = Blend(p)
    n = 2 * blend.q + CHECKPOINT + 17
    ref = np.array(brute_force_edf(p, n))
    assert blend.sources(0, n).tolist() == ref.tolist()
    start = max(blend.q - 5, 1)
    assert blend.sources(start, blend.q + 40).tolist() == ref[start:blend.q + 40].tolist()
    for m in sorted(set(random.Random(1).sample(range(n + 1), 60)) | {0, 1, blend.q, n}):
        assert blend.counts(m).tolist() == np.bincount(ref[:m], minlength=len(p)).tolist(), m


def test_the_largest_deficit_greedy_drifts_more_than_one_sample_where_the_deadline_rule_does_not():
    p = [7, 51, 3, 53, 19, 1]
    assert largest_deficit_greedy(p, sum(p)) > 1.0
    blend = Blend(p)
    n = np.arange(blend.q + 1)
    assert quota_ok(p, n, np.stack([blend.counts(int(m)) for m in n]))


def test_integer_weights_are_exact_and_small_for_decimal_weights():
    assert integer_weights([Fraction("0.6"), Fraction("0.3"), Fraction("0.1")]) == ([6, 3, 1], 10)
    assert integer_weights([Fraction(1), Fraction(1), Fraction(1)]) == ([1, 1, 1], 3)
    assert integer_weights([Fraction("0.7"), Fraction("0.2"), Fraction("0.05")]) == ([14, 4, 1], 19)
    with pytest.raises(ValueError, match="positive"):
        integer_weights([Fraction(1), Fraction(0)])


def test_integer_weights_round_a_huge_denominator_to_the_max_period():
    weights = [Fraction("0.1234567"), Fraction("0.7654321"), Fraction("1e-9"), Fraction("0.3")]
    p, q = integer_weights(weights)
    assert q == MAX_PERIOD and sum(p) == q and min(p) >= 1
    total = sum(weights)
    for w, x in zip(weights, p):
        assert abs(Fraction(x, q) - w / total) <= Fraction(len(p), q)
