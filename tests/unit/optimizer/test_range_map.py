"""Range maps: the module docstring's worked example, and full coverage on random layouts."""
import math
import random

from optimizer.range_map import ParamSlice, overlap, shard_param_slices


def _example_map():
    return {"a": (0, 160), "b": (160, 260), "c": (260, 320)}


def test_worked_example():
    m = _example_map()
    assert shard_param_slices(m, 0, 192) == [
        ParamSlice("a", 0, 160, 0, 160, 0, 160),
        ParamSlice("b", 0, 32, 160, 192, 160, 192),
    ]
    assert shard_param_slices(m, 192, 384) == [
        ParamSlice("b", 32, 100, 192, 260, 0, 68),
        ParamSlice("c", 0, 60, 260, 320, 68, 128),
    ]


def test_padding_only_shard_and_overlap():
    m = {"a": (0, 10), "b": (10, 140)}
    assert [s.param for s in shard_param_slices(m, 128, 256)] == ["b"]
    assert shard_param_slices(m, 140, 256) == []
    assert overlap(0, 5, 5, 9) is None
    assert overlap(0, 6, 5, 9) == (5, 6)


def test_random_layouts_cover_every_element_once():
    rng = random.Random(0)
    for _ in range(200):
        world = rng.randint(1, 5)
        pad = math.lcm(world, 8)
        sizes = [rng.randint(1, 40) for _ in range(rng.randint(1, 6))]
        m, off = {}, 0
        for i, n in enumerate(sizes):
            m[i] = (off, off + n)
            off += n
        total = -(-off // pad) * pad
        shard = total // world
        seen = {i: [0] * n for i, n in enumerate(sizes)}
        for r in range(world):
            for s in shard_param_slices(m, r * shard, (r + 1) * shard):
                assert s.bucket_end - s.bucket_start == s.numel == s.shard_end - s.shard_start
                assert s.bucket_start - r * shard == s.shard_start
                assert m[s.param][0] + s.param_start == s.bucket_start
                for k in range(s.param_start, s.param_end):
                    seen[s.param][k] += 1
        assert all(c == 1 for counts in seen.values() for c in counts)
