"""Mix specs and their schedule (dataset/mixture.py): the grammar and its errors, exact proportions at every prefix
of every stage, and each source's position carried across stage switches."""
from fractions import Fraction

import numpy as np
import pytest

from dataset.config import DataConfig
from dataset.mixture import BlendSchedule, parse_mix


def test_parse_normalise_and_round_trip():
    spec = parse_mix("web:0.6:/d/web, code:0.3:/d/code,books:0.1:/d/books", "100:books:1,hq:3:/d/hq;250:web:2")
    assert spec.names == ["web", "code", "books", "hq"] and spec.path("hq") == "/d/hq"
    assert [s.step for s in spec.stages] == [0, 100, 250]
    assert spec.stages[0].shares() == {"web": Fraction(3, 5), "code": Fraction(3, 10), "books": Fraction(1, 10)}
    assert spec.stages[1].shares() == {"books": Fraction(1, 4), "hq": Fraction(3, 4)}
    assert parse_mix(*spec.to_config()) == spec
    assert parse_mix("a:1/3:/x,b:2/3:/y").stages[0].shares() == {"a": Fraction(1, 3), "b": Fraction(2, 3)}
    assert parse_mix("a:1:C:/data,b:1:/y").path("a") == "C:/data"  # PATH keeps its colons


@pytest.mark.parametrize("mix,stages,match", [
    ("web:-0.5:/d/web,code:1:/d/code", "", "weight -0.5, but weights must be > 0"),
    ("web:0:/d/web,code:1:/d/code", "", "weight 0, but weights must be > 0"),
    ("web:lots:/d/web", "", "not a number"),
    ("web:1:/d/web,web:1:/d/other", "", "appears twice"),
    ("web:1:/d/web,code:1:/d/web", "", "both read /d/web"),
    ("web:1", "", "has no PATH"),
    ("web", "", "is not NAME:WEIGHT"),
    ("9web:1:/d", "", "must start with a letter"),
    ("", "", "--data_mix is empty"),
    ("web:1:/d/web", "5:web:1;3:web:2", "stage at step 3 is out of order"),
    ("web:1:/d/web", "0:web:2", "stage at step 0 is out of order"),
    ("web:1:/d/web", "5:web:1;5:web:2", "stage at step 5 is out of order"),
    ("web:1:/d/web", "five:web:1", "does not start with STEP:"),
    ("web:1:/d/web", "5:hq:1", "appears first here without a PATH"),
    ("web:1:/d/web", "5:web:1:/d/elsewhere", "one name is one source"),
    ("web:1:/d/web", "5:web:0", "weights must be > 0"),
])
def test_bad_specs_name_the_mistake(mix, stages, match):
    with pytest.raises(ValueError, match=match):
        parse_mix(mix, stages)


@pytest.mark.parametrize("kw,match", [
    (dict(data_mix="a:1:/x", data_dir="/y"), "exclude each other"),
    (dict(data_stages="5:a:1"), "set --data_mix too"),
    (dict(data_mix="a:1:/x", valid_data_dir="/v"), "holds out --valid_ratio of each source"),
    (dict(data_mix="a:-1:/x"), "weights must be > 0"),
])
def test_data_config_validates_the_mix(kw, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kw).validate()


def stream_of(schedule: BlendSchedule, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The source and ordinal of samples [0, n), assigned in uneven chunks (as micro-batches would)."""
    srcs, ords, a = [], [], 0
    for size in [1, 7, 3, 64, 2, 5] * (n // 82 + 1):
        if a >= n:
            break
        s, o = schedule.assign(a, min(n, a + size))
        srcs.append(s)
        ords.append(o)
        a += size
    return np.concatenate(srcs), np.concatenate(ords)


CASES = {  # mix, stages, samples per step
    "2 sources 9:1": ("a:9:/a,b:1:/b", "", 8),
    "3 sources 0.5/0.3/0.2, a stage": ("a:0.5:/a,b:0.3:/b,c:0.2:/c", "7:c:3,a:1", 12),
    "4 sources uneven, two stages": ("a:7:/a,b:51:/b,c:3:/c,d:53:/d", "3:d:1,e:19:/e;11:a:1,b:1,c:1,d:1,e:1", 16),
    "5 sources": ("a:1:/a,b:2:/b,c:3:/c,d:4:/d,e:1000:/e", "", 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_prefix_of_every_stage_is_within_one_sample_and_positions_carry_over(case):
    mix, stages, per_step = CASES[case]
    schedule = BlendSchedule(parse_mix(mix, stages), per_step)
    n = schedule.starts[-1] + 3 * per_step * 41
    src, ords = stream_of(schedule, n)
    for i in range(len(schedule.names)):  # its ordinals run 0, 1, 2, ... over the stream: none repeated or skipped
        assert ords[src == i].tolist() == list(range(int((src == i).sum())))
    bounds = schedule.starts + [n]
    for k in range(len(schedule.starts)):
        a, b = bounds[k], bounds[k + 1]
        for i, name in enumerate(schedule.names):
            share = schedule.shares[k].get(name, Fraction(0))
            got = np.concatenate(([0], np.cumsum(src[a:b] == i)))
            exact = np.array([float(share * m) for m in range(b - a + 1)])
            assert np.all(np.abs(got - exact) < 1.0), (case, k, name)
    for m in range(0, n + 1, 13):
        assert schedule.counts(m).tolist() == np.bincount(src[:m], minlength=len(schedule.names)).tolist()
