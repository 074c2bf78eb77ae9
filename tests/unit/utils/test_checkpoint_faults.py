"""CheckpointManager on real faults: a tmpfs that fills up inside each file of a save (optimizer shard, comm-hook
state, weights, trainer state, COMPLETE, best/), a read-only remount, and files that lost their read bit."""
import errno
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tests.support.disks import (fill, needs_mount, needs_permissions, obey_permissions, read_only,  # noqa: F401
                                 tmpfs)
from utils.checkpoint import CheckpointManager, load_trainer_state, verify_checkpoint
from utils.disk_faults import DiskFault

PAGE = 4096
# the order a save writes its files (utils/checkpoint.py), then what best/ copies
ORDER = ["optim/rank_00000.pt", "comm/rank_00000.pt", "model.safetensors", "trainer_state.json", "config.json",
         "COMPLETE", "best/model.safetensors"]
# what the library that writes each file really raises on a full disk (none of them an OSError(ENOSPC) but open())
RAISES = {"optim/rank_00000.pt": "RuntimeError", "comm/rank_00000.pt": "RuntimeError",
          "model.safetensors": "SafetensorError"}


def _save(m: CheckpointManager, step: int, best: bool = False) -> Path:
    n = 16 * 1024  # 64 KB per tensor: each file spans many pages
    return m.save(step, {"w": torch.full((n,), float(step))}, {"m": torch.full((n,), float(step))},
                  {"iter": step, "pad": "x" * 20000}, {"config.json": {"d": 4}}, is_best=best,
                  rank_state={"err": torch.zeros(n)})


def _pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


def _sizes(tmp_path) -> dict[str, int]:
    """Each file's size in a save of step 2, measured on an unlimited disk."""
    d = _save(CheckpointManager(tmp_path / "measure"), 2)
    return {rel: (d / rel).stat().st_size for rel in ORDER[:-1]}


@needs_mount
@pytest.mark.parametrize("target", ORDER)
def test_a_disk_that_fills_inside_each_file_keeps_the_earlier_checkpoints(tmp_path, tmpfs, target):
    sizes = _sizes(tmp_path)
    run = tmpfs(4)
    m = CheckpointManager(run, keep_last_n=2)
    _save(m, 1, best=True)
    before = [sizes[rel] for rel in ORDER[:ORDER.index(target)] if rel in sizes]
    if target.startswith("best/"):  # the whole step fits, best/'s copy of the weights does not
        leave = sum(_pages(s) for s in before) + _pages(sizes["model.safetensors"]) // 2
    else:
        leave = sum(_pages(s) for s in before) + (_pages(sizes[target]) // 2 // PAGE) * PAGE
    filler = fill(run, leave=leave)
    with pytest.raises(DiskFault) as info:
        _save(m, 2, best=True)
    line = info.value.strerror
    assert info.value.errno == errno.ENOSPC and "\n" not in line, line
    assert type(info.value.__cause__).__name__ == RAISES.get(target, "OSError"), repr(info.value.__cause__)
    root = run / "ckpt"
    if target.startswith("best/"):
        assert line.startswith(f"no space left on device while writing ckpt/best (the copy of step 2, which itself "
                               f"is saved) to {root}: the earlier best/ is kept"), line
        assert verify_checkpoint(root / "step_000000002")
    else:
        assert line.startswith(f"no space left on device while writing checkpoint step 2 to {root} (need about "), line
        assert line.endswith("the earlier checkpoints are kept; free space there, then resume"), line
        assert not (root / "step_000000002").exists()
    assert not [p.name for p in root.iterdir() if p.name.startswith(".tmp-")], "a temp dir was left on the disk"
    assert verify_checkpoint(root / "step_000000001") and load_trainer_state(root / "best")["iter"] == 1
    filler.unlink()  # space is back: the same save works
    _save(m, 2, best=True)
    assert m.latest().name == "step_000000002" and load_trainer_state(root / "best")["iter"] == 2


@needs_mount
def test_a_read_only_remount_fails_the_save_with_one_line(tmp_path, read_only):
    run = tmp_path / "run"
    m = CheckpointManager(run)
    _save(m, 1)
    read_only(run)
    with pytest.raises(DiskFault) as info:
        _save(m, 2)
    assert info.value.errno == errno.EROFS
    assert info.value.strerror.startswith(f"read-only file system while writing checkpoint step 2 to {run / 'ckpt'}")
    assert info.value.strerror.endswith("the earlier checkpoints are kept; make it writable, then resume")
    assert [p.name for p in (run / "ckpt").iterdir()] == ["step_000000001"]


@needs_permissions
@pytest.mark.parametrize("locked", ["optim/rank_00000.pt", "COMPLETE"])
def test_a_checkpoint_file_without_its_read_bit_is_an_error_not_a_skip(tmp_path, locked):
    """Skipping it would resume the older checkpoint and prune this one at the next save."""
    m = CheckpointManager(tmp_path / "run")
    _save(m, 1)
    newest = _save(m, 2)
    (newest / locked).chmod(0o000)
    script = ("import sys\nfrom utils.checkpoint import latest_checkpoint\n"
              "try:\n    print('latest', latest_checkpoint(sys.argv[1]).name)\n"
              "except ValueError as e:\n    print('error', e)")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run" / "ckpt")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, preexec_fn=obey_permissions)
    assert proc.stdout.startswith(f"error cannot read checkpoint file {newest / locked} (Permission denied): give it "
                                  f"read permission again (chmod -R u+rX {newest}), then resume"), proc
