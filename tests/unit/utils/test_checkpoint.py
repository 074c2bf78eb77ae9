"""utils.checkpoint: layout, atomicity (including SIGKILL mid-save), verification, pruning, best/, RNG, ranks."""
import json
import os
import random
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from utils import checkpoint as ck
from utils.checkpoint import (CheckpointManager, copy_tokenizer, get_rng_state, load_optim_states, load_trainer_state,
                              resolve_checkpoint, set_rng_state, verify_checkpoint)
from utils.run_layout import MODEL_NAME


def load_model_state(ckpt_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(ckpt_dir) / MODEL_NAME))

def _save(m, step, value=None, best=False, **kw):
    value = float(step) if value is None else value
    return m.save(step, {"w": torch.full((4, 3), value)}, {"m": torch.full((2,), value), "n": step},
                  {"iter": step}, {"config.json": {"d": 4}}, is_best=best, **kw)


def _steps(out):
    return sorted(p.name for p in (Path(out) / "ckpt").iterdir())


def test_layout_and_roundtrip(tmp_path):
    m = CheckpointManager(tmp_path)
    d = _save(m, 7)
    assert d == tmp_path / "ckpt" / "step_000000007"
    names = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
    assert names == {"model.safetensors", "optim/rank_00000.pt", "trainer_state.json", "config.json", "COMPLETE"}
    manifest = json.loads((d / "COMPLETE").read_text())
    assert set(manifest["files"]) == names - {"COMPLETE"} and manifest["step"] == 7
    assert m.latest() == d and verify_checkpoint(d)
    assert torch.equal(load_model_state(d)["w"], torch.full((4, 3), 7.0))
    assert load_trainer_state(d) == {"iter": 7}
    (opt,) = load_optim_states(d)
    assert opt["n"] == 7 and torch.equal(opt["m"], torch.full((2,), 7.0))
    assert json.loads((d / "config.json").read_text()) == {"d": 4}


def test_keep_last_n_validation_and_pruning(tmp_path):
    with pytest.raises(ValueError, match="keep_last_n"):
        CheckpointManager(tmp_path, keep_last_n=1)
    with pytest.raises(ValueError, match="barrier"):
        CheckpointManager(tmp_path, rank=0, world_size=2)
    m = CheckpointManager(tmp_path, keep_last_n=3)
    for s in range(1, 6):
        _save(m, s)
    assert _steps(tmp_path) == ["step_000000003", "step_000000004", "step_000000005"]
    with pytest.raises(ValueError, match="extra_json"):
        m.save(6, {"w": torch.ones(1)}, extra_json={"COMPLETE": {}})


def test_best_replaced_atomically_and_survives_pruning(tmp_path):
    m = CheckpointManager(tmp_path, keep_last_n=2)
    _save(m, 1, best=True)
    for s in (2, 3, 4):
        _save(m, s)
    assert _steps(tmp_path) == ["best", "step_000000003", "step_000000004"]
    assert verify_checkpoint(m.best_dir) and load_trainer_state(m.best_dir) == {"iter": 1}
    _save(m, 5, best=True)
    assert load_trainer_state(m.best_dir) == {"iter": 5}
    assert torch.equal(load_model_state(m.best_dir)["w"], torch.full((4, 3), 5.0))
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".tmp-")]


def test_resave_same_step_swaps(tmp_path):
    m = CheckpointManager(tmp_path)
    _save(m, 1)
    _save(m, 2, value=10.0)
    _save(m, 2, value=20.0)
    assert m.latest().name == "step_000000002"
    assert torch.equal(load_model_state(m.latest())["w"], torch.full((4, 3), 20.0))
    assert _steps(tmp_path) == ["step_000000001", "step_000000002"]


def test_crash_between_swap_renames(tmp_path, monkeypatch):
    m = CheckpointManager(tmp_path)
    _save(m, 1)
    _save(m, 2)
    real_rename, calls = os.rename, []

    def failing_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old dir moved aside, new one not yet in place: a crash here
            raise OSError("injected crash")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="injected"):
        _save(m, 2, value=99.0)
    monkeypatch.setattr(os, "rename", real_rename)
    assert m.latest().name == "step_000000001"
    _save(m, 3)
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".tmp-")]


def test_crash_mid_prune_leaves_no_half_step_dir(tmp_path, monkeypatch):
    m = CheckpointManager(tmp_path)
    _save(m, 1)
    _save(m, 2)

    def dying_rmtree(path, ignore_errors=False):
        (Path(path) / "COMPLETE").unlink()  # deleted a file, then the process died
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.shutil, "rmtree", dying_rmtree)
    with pytest.raises(KeyboardInterrupt):
        _save(m, 3)
    monkeypatch.undo()
    assert _steps(tmp_path)[-2:] == ["step_000000002", "step_000000003"]
    assert all(verify_checkpoint(p) for p in (tmp_path / "ckpt").glob("step_*"))


@pytest.mark.parametrize("damage", ["flip_model", "truncate_complete", "truncate_optim", "no_complete"])
def test_corrupt_newest_is_skipped_with_warning(tmp_path, damage):
    m = CheckpointManager(tmp_path)
    _save(m, 1)
    d2 = _save(m, 2)
    if damage == "flip_model":
        data = bytearray((d2 / "model.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (d2 / "model.safetensors").write_bytes(bytes(data))
        why = "sha256"
    elif damage == "truncate_complete":
        text = (d2 / "COMPLETE").read_text()
        (d2 / "COMPLETE").write_text(text[: len(text) // 2])
        why = "COMPLETE"
    elif damage == "truncate_optim":
        p = d2 / "optim" / "rank_00000.pt"
        p.write_bytes(p.read_bytes()[:-10])
        why = "bytes"
    else:
        (d2 / "COMPLETE").unlink()
        why = "COMPLETE"
    assert not verify_checkpoint(d2)
    with pytest.warns(RuntimeWarning, match=f"step_000000002.*{why}"):
        assert m.latest().name == "step_000000001"
    with pytest.warns(RuntimeWarning):
        assert resolve_checkpoint(tmp_path).name == "step_000000001"
    if damage != "no_complete":
        with pytest.raises(ValueError, match="not loadable"):
            resolve_checkpoint(d2)


def test_resolve_checkpoint(tmp_path):
    m = CheckpointManager(tmp_path / "run")
    _save(m, 1, best=True)
    d2 = _save(m, 2)
    assert resolve_checkpoint(tmp_path / "run") == d2
    assert resolve_checkpoint(tmp_path / "run" / "ckpt") == d2
    assert resolve_checkpoint(d2) == d2
    assert resolve_checkpoint(m.best_dir) == m.best_dir
    with pytest.raises(ValueError, match="not a directory"):
        resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint found"):
        resolve_checkpoint(tmp_path / "empty")
    (d2 / "COMPLETE").unlink()
    (m.ckpt_root / "step_000000001" / "COMPLETE").write_text("{")
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path / "run")


def test_tied_and_flat_buffer_weights(tmp_path):
    m = CheckpointManager(tmp_path)
    emb = torch.randn(6, 4, dtype=torch.bfloat16)
    flat = torch.randn(30)
    state = {"embed": emb, "lm_head": emb, "a": flat[:10].view(2, 5), "b": flat[10:].view(4, 5)}
    d = m.save(1, state)
    loaded = load_model_state(d)
    assert loaded["lm_head"].dtype == torch.bfloat16 and torch.equal(loaded["lm_head"], emb)
    assert torch.equal(loaded["a"], state["a"]) and torch.equal(loaded["b"], state["b"])
    d = m.save(2, state, drop_keys=["lm_head"])
    assert set(load_model_state(d)) == {"embed", "a", "b"}
    assert torch.equal(state["embed"], emb)  # the caller's tensors are untouched


def test_copy_tokenizer(tmp_path):
    src = tmp_path / "tok"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    dest = copy_tokenizer(src, tmp_path / "run")
    assert (dest / "tokenizer.json").read_text() == "{}"
    (src / "tokenizer.json").write_text('{"v": 2}')
    assert (copy_tokenizer(src, tmp_path / "run") / "tokenizer.json").read_text() == '{"v": 2}'
    assert copy_tokenizer(dest, tmp_path / "run") == dest
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["tokenizer"]
    with pytest.raises(ValueError, match="does not exist"):
        copy_tokenizer(tmp_path / "missing", tmp_path / "run")


def _draw():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
            torch.rand(3).tolist(), torch.randn(2).tolist())


def test_rng_roundtrip_exact():
    random.gauss(0, 1)  # leaves a cached gaussian in both Pythons' and NumPy's state
    np.random.standard_normal()
    state = json.loads(json.dumps(get_rng_state()))
    first = _draw()
    _draw()
    set_rng_state(state)
    assert _draw() == first
    with pytest.raises(ValueError, match="get_rng_state"):
        set_rng_state({"python": state["python"]})


def _saver(out, mode, progress):
    """Child process body: save checkpoints, appending "saved N" lines to `progress`, until SIGKILLed."""
    m = CheckpointManager(out, keep_last_n=2)

    def save(step):
        m.save(step, {"w": torch.full((256, 512), float(step))}, {"m": torch.randn(512, 512)}, {"iter": step})
        with open(progress, "a") as fh:
            fh.write(f"saved {step}\n")

    if mode == "stall":
        save(1)

        def torn_model(tmp, state):
            # half a model file, then stall: the parent SIGKILLs us mid-write
            (tmp / "model.safetensors").write_bytes(b"\0" * 100000)
            with open(progress, "a") as fh:
                fh.write("MIDWRITE\n")
            time.sleep(600)

        ck._write_model = torn_model
        save(2)
    step = 0
    while True:
        step += 1
        save(step)


def _start_saver(out, mode, wait_for, timeout=60):
    """Fork a saver (it inherits the imported torch, so it starts at once) and wait for a progress line."""
    import multiprocessing

    progress = Path(str(out) + ".progress")
    proc = multiprocessing.get_context("fork").Process(target=_saver, args=(str(out), mode, str(progress)))
    proc.start()
    deadline = time.time() + timeout
    while time.time() < deadline and proc.is_alive():
        if progress.exists() and wait_for in progress.read_text().splitlines():
            return proc, progress
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"saver never reported {wait_for!r}")


def _sigkill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL


def test_sigkill_mid_write_leaves_previous_checkpoint(tmp_path):
    proc, _ = _start_saver(tmp_path, "stall", "MIDWRITE")
    _sigkill(proc)
    m = CheckpointManager(tmp_path)
    assert m.latest().name == "step_000000001"
    assert [n for n in _steps(tmp_path) if n.startswith(".tmp-step_000000002-")], "the torn write is left in tmp"
    assert resolve_checkpoint(tmp_path).name == "step_000000001"
    _save(m, 2)  # the resumed run re-saves: the torn tmp dir is cleaned up
    assert _steps(tmp_path) == ["step_000000001", "step_000000002"]


def test_sigkill_at_random_times(tmp_path):
    rng = random.Random(0)
    for trial in range(4):
        out = tmp_path / f"run{trial}"
        proc, progress = _start_saver(out, "loop", "saved 2")
        time.sleep(rng.uniform(0.0, 0.3))
        _sigkill(proc)
        lines = progress.read_text().splitlines()
        last_reported = max(int(ln.split()[1]) for ln in lines if ln.startswith("saved "))
        latest = CheckpointManager(out).latest()
        assert verify_checkpoint(latest)
        step = int(latest.name.split("_")[1])
        assert step in (last_reported, last_reported + 1)  # killed before/after reporting a finished save
        for p in (out / "ckpt").iterdir():
            if p.name.startswith("step_"):
                assert verify_checkpoint(p), p
        assert torch.equal(load_model_state(latest)["w"], torch.full((256, 512), float(step)))


def _dist_worker(rank, world, out, store):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        for rank1_has_optim in (True, False):
            m = CheckpointManager(f"{out}/{rank1_has_optim}", keep_last_n=2, rank=rank, world_size=world,
                                  barrier=dist.barrier)
            for step in (1, 2, 3):
                optim = {"rank": rank, "t": torch.full((2,), 10.0 * rank + step)}
                if rank == 1 and not rank1_has_optim:
                    optim = None
                m.save(step, {"w": torch.full((3,), float(step))}, optim,
                       {"iter": step} if rank == 0 else None, is_best=step == 2)
                assert verify_checkpoint(m.latest())  # after the final barrier every rank sees it
    finally:
        dist.destroy_process_group()


def test_two_rank_gloo_save(tmp_path):
    import torch.multiprocessing as mp

    store = Path(tempfile.mkdtemp(dir=tmp_path)) / "store"
    # fork: the children inherit the imported torch instead of importing it again (CPU only, no CUDA state)
    mp.start_processes(_dist_worker, args=(2, str(tmp_path), str(store)), nprocs=2, join=True,
                       start_method="fork")
    for rank1_has_optim, expected in ((True, [0, 1]), (False, [0])):
        out = tmp_path / str(rank1_has_optim)
        assert _steps(out) == ["best", "step_000000002", "step_000000003"]
        latest = CheckpointManager(out).latest()
        states = load_optim_states(latest)
        assert [s["rank"] for s in states] == expected
        for s in states:
            assert torch.equal(s["t"], torch.full((2,), 10.0 * s["rank"] + 3))
        best = out / "ckpt" / "best"
        assert load_optim_states(best) == [] and verify_checkpoint(best)  # best/ keeps the weights only
        assert load_trainer_state(best) == {"iter": 2}
        assert load_trainer_state(latest) == {"iter": 3}


def test_best_is_an_independent_copy(tmp_path):
    """best/ shares no file with its step dir: deleting or damaging the step leaves best/ loadable."""
    m = CheckpointManager(tmp_path, keep_last_n=2)
    m.save(1, {"w": torch.ones(4)}, {"o": torch.zeros(1)}, {"iter": 1}, extra_json={"config.json": {"a": 1}},
           is_best=True)
    best, step = tmp_path / "ckpt" / "best", tmp_path / "ckpt" / "step_000000001"
    for f in best.iterdir():
        assert f.stat().st_nlink == 1, f
    (step / "model.safetensors").write_bytes(b"damaged")
    assert verify_checkpoint(best) and not verify_checkpoint(step)
    for step_no in (2, 3, 4):  # pruning removes step 1; best/ stays
        m.save(step_no, {"w": torch.full((4,), float(step_no))}, None, {"iter": step_no})
    assert not step.exists() and verify_checkpoint(best)
    assert torch.equal(load_model_state(best)["w"], torch.ones(4))


def test_a_full_disk_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    import errno

    import utils.checkpoint as ck

    m = CheckpointManager(tmp_path, keep_last_n=2)
    m.save(1, {"w": torch.ones(1000)}, None, {"iter": 1})
    real = ck._write_model

    def full(tmp, state):
        real(tmp, state)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "_write_model", full)
    with pytest.raises(OSError, match=r"no space left on device while writing checkpoint step 2 to .*ckpt \(need "
                                      r"about 0.00 GB\)") as info:
        m.save(2, {"w": torch.ones(1000)}, None, {"iter": 2})
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_000000001"]  # no torn temp dir left
    assert verify_checkpoint(tmp_path / "ckpt" / "step_000000001")
    monkeypatch.setattr(ck, "_write_model", real)
    m.save(2, {"w": torch.ones(1000)}, None, {"iter": 2})  # space is back: the next save works
    assert m.latest().name == "step_000000002"
