"""MixtureBatchSampler and MixtureDataset: per-source epochs, rank striding, exact resume (also on another world
size, with a stage added), and the refusals of check_resume."""
import itertools

import numpy as np
import pytest
import torch

from dataset.loader import BatchStream
from dataset.mixture import BlendSchedule, parse_mix
from dataset.mixture_sampler import MixtureBatchSampler, MixtureDataset
from dataset.sampler import ResumableBatchSampler

MIX, STAGES = "a:0.7:/a,b:0.2:/b,c:0.1:/c", "6:b:1,c:1;9:a:1,b:2,c:1"
SIZES = [23, 61, 9]  # uneven: c runs out often, b rarely
B, GA = 4, 2


def sampler(rank=0, world=1, mix=MIX, stages=STAGES, sizes=SIZES, batch=B, ga=GA, seed=3, log=None):
    schedule = BlendSchedule(parse_mix(mix, stages), ga * batch)
    return MixtureBatchSampler(schedule, sizes, batch, rank, world, seed, tokens_per_sample=16,
                               log=log or (lambda m: None))


def take(s, n):
    return list(itertools.islice(iter(s), n))


def source_and_window(ids, sizes=SIZES):
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    src = np.searchsorted(offsets, ids, side="right") - 1
    return src, np.asarray(ids) - offsets[src]


def test_each_source_reads_whole_epochs_in_its_own_order_across_stage_switches():
    s = sampler()
    ids = np.concatenate([s.micro_batch(g) for g in range(60)])  # 240 samples, both stage switches
    src, win = source_and_window(ids)
    for i, size in enumerate(SIZES):
        mine = win[src == i]
        full = len(mine) // size
        assert full >= 1, i
        for e in range(full):  # every epoch is a permutation of the source's windows: none repeated, none skipped
            assert sorted(mine[e * size:(e + 1) * size]) == list(range(size))
        assert len(set(mine[full * size:])) == len(mine[full * size:])
    c = [w for k, w in zip(src, win) if k == 2]
    assert c[:9] != c[9:18]  # reshuffled per epoch


def test_one_rank_equals_two_ranks_micro_batch_for_micro_batch():
    one = take(sampler(), 40)
    r0, r1 = take(sampler(0, 2), 20), take(sampler(1, 2), 20)
    assert one == [mb for pair in zip(r0, r1) for mb in pair]


@pytest.mark.parametrize("world_before,world_after", [(1, 1), (2, 2), (2, 1), (1, 2)])
def test_resume_after_any_position_continues_the_stream_on_any_world_size(world_before, world_after):
    total = 44  # micro-batches of the uninterrupted run, global
    ref = take(sampler(), total)
    for cut in (0, 4, 10, 18, 26):  # checkpoints at step boundaries (GA = 2), before, at and after stage switches
        seen = []
        for r in range(world_before):  # the first run read ahead a few micro-batches: state_at ignores that
            s = sampler(r, world_before)
            got = take(s, cut // world_before + 3)
            seen += got[:cut // world_before]
        state = sampler().state_at(cut)
        for r in range(world_after):
            s = sampler(r, world_after)
            s.check_resume(state)
            s.load_state_dict(state)
            seen += take(s, (total - cut) // world_after)
        assert sorted(map(tuple, seen)) == sorted(map(tuple, ref)), cut  # the union of samples is the same


def test_batch_stream_seek_and_position_follow_the_trainer():
    ds = MixtureDataset([_Windows(n, tag) for n, tag in zip(SIZES, (100, 200, 300))])
    s = sampler()
    stream = BatchStream(ds, s, lambda items: torch.tensor(items), torch.device("cpu"))
    stream.seek(6)
    first = next(stream)
    assert first.tolist() == [ds[i] for i in s.micro_batch(6)]
    next(stream)
    assert stream.consumed_micro_batches == 8
    assert stream.metrics_at(8) == s.metrics_at(8)


class _Windows(torch.utils.data.Dataset):
    def __init__(self, n, tag):
        self.n, self.tag = n, tag

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        assert 0 <= i < self.n
        return self.tag + i


def test_mixture_dataset_maps_ids_to_their_source():
    ds = MixtureDataset([_Windows(3, 100), _Windows(2, 200)])
    assert [ds[i] for i in range(len(ds))] == [100, 101, 102, 200, 201]
    with pytest.raises(IndexError):
        ds[5]


def test_metrics_and_the_epoch_line():
    lines = []
    s = sampler(log=lines.append)
    take(s, 40)
    m = s.metrics_at(40)
    counts = s.schedule.counts(40 * B)
    assert m["tokens/a"] == counts[0] * 16 and m["epoch/c"] == pytest.approx(counts[2] / 9)
    assert any("source 'c' has used all 9 of its training windows; epoch 2 starts" in line for line in lines)


def test_check_resume_accepts_a_later_stage_and_one_from_the_current_step():
    saved = sampler(stages="6:b:1,c:1").state_at(20)  # step 10 of the stage from step 6
    sampler(stages="6:b:1,c:1;12:a:1").check_resume(saved)
    sampler(stages="6:b:1,c:1;10:a:1,c:2").check_resume(saved)  # from exactly the current step


@pytest.mark.parametrize("kw,match", [
    (dict(stages="6:b:2,c:1"), "would change the mix in force .* add a stage instead, from step 10 or later"),
    (dict(stages="6:b:1,c:1;8:a:1"), "would change the mix in force"),
    (dict(stages="5:b:1,c:1"), "would change the mix in force"),
    (dict(stages="4:b:1,c:1;6:b:1,c:1"), "the stages before step 10 changed"),
    (dict(mix="a:0.6:/a,b:0.3:/b,c:0.1:/c"), "the stages before step 10 changed"),
    (dict(batch=8, ga=1), "keep --batch_size"),
    (dict(ga=4), "keep --gradient_accumulation_steps"),
    (dict(seed=4), "keep --data_seed=3"),
    (dict(sizes=[23, 60, 9]), "source 'b' has 60 training windows now and had 61"),
])
def test_check_resume_refuses_what_would_not_continue_the_stream(kw, match):
    saved = sampler(stages="6:b:1,c:1").state_at(20)
    with pytest.raises(ValueError, match=match):
        sampler(**{"stages": "6:b:1,c:1", **kw}).check_resume(saved)


def test_a_mix_and_one_directory_do_not_take_over_each_other():
    with pytest.raises(ValueError, match="one --data_dir, and --data_mix cannot take it over"):
        sampler().check_resume(ResumableBatchSampler(50, 4).state_at(3))
    with pytest.raises(ValueError, match="holds the data position of a mix"):
        ResumableBatchSampler(50, 4).check_resume(sampler().state_at(3))
    ResumableBatchSampler(50, 4).check_resume(ResumableBatchSampler(50, 4).state_at(3))


@pytest.mark.parametrize("mix,stages,sizes", [
    ("a:9:/a,b:1:/b", "", [5, 300]),
    ("a:0.5:/a,b:0.3:/b,c:0.2:/c", "5:c:3,a:1", [40, 7, 13]),
    ("a:7:/a,b:51:/b,c:3:/c,d:53:/d", "4:d:1,e:19:/e", [11, 90, 3, 57, 20]),
    ("a:1:/a,b:2:/b,c:3:/c,d:4:/d,e:1000:/e", "", [2, 3, 5, 7, 11]),
])
def test_the_sample_stream_keeps_every_share_within_one_sample_at_every_prefix(mix, stages, sizes):
    """The sampler's own stream (ids of sources of uneven sizes that wrap around their epochs): at every prefix of
    every stage, each source's count is within one sample of its share."""
    s = sampler(mix=mix, stages=stages, sizes=sizes)
    n = 50 * B * GA
    src, _ = source_and_window(np.concatenate([s.micro_batch(g) for g in range(n // B)]), sizes)
    bounds = s.schedule.starts + [n]
    for k, shares in enumerate(s.schedule.shares):
        seg = src[bounds[k]:bounds[k + 1]]
        for i, name in enumerate(s.names):
            got = np.concatenate(([0], np.cumsum(seg == i)))
            want = np.arange(len(seg) + 1) * float(shares.get(name, 0))
            assert np.abs(got - want).max() < 1.0, (k, name)
