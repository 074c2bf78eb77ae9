"""ResumableBatchSampler: rank striding equals gradient accumulation, epochs reshuffle, exact resume."""
import itertools

import pytest

from dataset.sampler import ResumableBatchSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_one_rank_ga4_equals_two_ranks_ga2_across_epochs():
    n, b, steps = 37, 3, 9  # 12 micro-batches per epoch: steps cross epoch boundaries
    one = _take(ResumableBatchSampler(n, b, 0, 1, seed=5), 4 * steps)
    r0 = _take(ResumableBatchSampler(n, b, 0, 2, seed=5), 2 * steps)
    r1 = _take(ResumableBatchSampler(n, b, 1, 2, seed=5), 2 * steps)
    for s in range(steps):
        single = one[4 * s:4 * s + 4]
        multi = [r0[2 * s], r1[2 * s], r0[2 * s + 1], r1[2 * s + 1]]
        assert single == multi
    assert not set(map(tuple, r0)) & set(map(tuple, r1[:4]))  # ranks disjoint within an epoch


def test_epochs_cover_all_and_reshuffle():
    s = ResumableBatchSampler(12, 4, seed=0)
    e0, e1 = _take(s, 3), [s.micro_batch(g) for g in range(3, 6)]
    assert sorted(sum(e0, [])) == list(range(12)) and sorted(sum(e1, [])) == list(range(12))
    assert e0 != e1
    assert s.state_dict() == {"epoch": 1, "consumed_micro_batches": 0}


@pytest.mark.parametrize("world", [1, 2])
def test_resume_yields_exactly_the_continuation(world):
    full = [_take(ResumableBatchSampler(29, 2, r, world, seed=1), 40) for r in range(world)]
    for cut in (0, 5, 7, 13):
        states = []
        for r in range(world):
            s = ResumableBatchSampler(29, 2, r, world, seed=1)
            _take(s, cut)
            states.append(s.state_dict())
        assert all(st == states[0] for st in states)
        for r in range(world):
            fresh = ResumableBatchSampler(29, 2, r, world, seed=1)
            fresh.load_state_dict(states[0])
            assert _take(fresh, 40 - cut) == full[r][cut:]


def test_state_at_is_absolute_and_survives_a_world_change():
    s = ResumableBatchSampler(50, 5, 0, 2, seed=9)
    it = iter(s)
    [next(it) for _ in range(6)]  # a loader read ahead 6 per rank, training used 4 per rank (8 in all)
    state = s.state_at(8)
    assert state == {"epoch": 0, "consumed_micro_batches": 8}
    assert s.state_at(23) == {"epoch": 2, "consumed_micro_batches": 3}
    single = ResumableBatchSampler(50, 5, 0, 1, seed=9)
    single.load_state_dict(state)  # resume on another world size: the global stream continues
    assert _take(single, 3) == [single.micro_batch(g) for g in (8, 9, 10)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="fewer than one micro-batch"):
        ResumableBatchSampler(3, 4)
    with pytest.raises(ValueError, match="rank"):
        ResumableBatchSampler(30, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="does not fit"):
        ResumableBatchSampler(30, 4).load_state_dict({"epoch": 0, "consumed_micro_batches": 99})


def test_state_after_a_resume_is_absolute():
    """Resumed at 6, then 4 more per rank on 2 ranks: the position is 14, never 6 + 6 + 8."""
    s = ResumableBatchSampler(100, 2, 1, 2, seed=3)
    s.load_state_dict({"epoch": 0, "consumed_micro_batches": 6})
    _take(s, 4)
    assert s.state_dict() == {"epoch": 0, "consumed_micro_batches": 14}
    assert s.state_at(14) == s.state_dict()
