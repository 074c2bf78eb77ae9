"""utils/disk_faults.py on real faults: what each library really raises on a full tmpfs, a read-only mount and a
file it may not write, and that fault_errno, the CLI contract, `writing` and `BestEffort` read every one of them."""
import errno
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from tests.support.disks import (fill, needs_mount, needs_permissions, obey_permissions, obey_quota,  # noqa: F401
                                 read_only, tmpfs, tmpfs_quota_reason)
from utils.cli import error_line, is_user_error, run_main
from utils.disk_faults import BestEffort, DiskFault, fault_errno, writing

BIG = 64 * 1024  # bytes a writer below needs at least; the disk is filled to leave none


def _safetensors(path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(BIG)}, str(path))


def _torch_save(path):
    with open(path, "wb") as fh:  # a file handle: torch.save(obj, str) loses the errno (see disk_faults.py)
        torch.save({"w": torch.zeros(BIG)}, fh)


def _numpy_save(path):
    np.save(path, np.zeros(BIG))


def _numpy_tofile(path):
    np.zeros(BIG).tofile(path)


def _pyarrow(path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"x": np.random.default_rng(0).random(BIG)}), str(path))


def _tokenizers(path):
    from tokenizers import Tokenizer, models

    vocab = {f"token{i:06d}" * 4: i for i in range(BIG // 8)}
    Tokenizer(models.WordLevel(vocab, unk_token="token000000" * 4)).save(str(path))


def _python_write(path):
    with open(path, "w") as fh:
        json.dump(["x" * 1000] * (BIG // 100), fh)


def _tensorboard(path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(path))
    try:
        for i in range(BIG):
            writer.add_scalar("loss", 1.0, i)
        writer.flush()
    finally:
        try:
            writer.close()
        except OSError:
            pass


WRITERS = {"safetensors": _safetensors, "torch.save": _torch_save, "numpy.save": _numpy_save,
           "numpy.tofile": _numpy_tofile, "pyarrow": _pyarrow, "tokenizers": _tokenizers, "open/json": _python_write,
           "tensorboard": _tensorboard}


@needs_mount
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_library_on_a_real_full_disk_reads_as_enospc(tmpfs, name, monkeypatch):
    import threading

    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # TensorBoard's writer thread dies too
    disk = tmpfs(1)
    fill(disk)
    with pytest.raises(Exception) as info:
        WRITERS[name](disk / "out")
    assert fault_errno(info.value) == errno.ENOSPC, repr(info.value)
    assert is_user_error(info.value)
    line = error_line(info.value)
    assert "\n" not in line and "no space left on device" in line.lower(), line


@needs_mount
def test_a_memmap_on_a_full_disk_kills_the_process(tmpfs):
    """Why no writer here goes through a memmap: the fault is a SIGBUS, not an exception anyone could handle."""
    disk = tmpfs(1)
    fill(disk, leave=8192)  # room for the .npy header and the last page memmap extends the file with
    code = ("import numpy as np; m = np.lib.format.open_memmap(%r, mode='w+', dtype=np.int64, shape=(1 << 20,)); "
            "m[:] = 1; m.flush()" % str(disk / "m.npy"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -7, proc  # SIGBUS


@needs_mount
def test_a_read_only_mount_reads_as_erofs(tmp_path, read_only):
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(ro)
    for name in ("safetensors", "torch.save", "numpy.save", "tokenizers"):
        with pytest.raises(Exception) as info:
            WRITERS[name](ro / "out")
        assert fault_errno(info.value) == errno.EROFS, (name, repr(info.value))


@needs_permissions
def test_a_directory_without_write_permission_reads_as_eacces(tmp_path):
    """Root writes anywhere; the child drops that override, so the directory's mode is what it meets."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    script = ("import sys, torch; from safetensors.torch import save_file; from utils.disk_faults import fault_errno\n"
              "try:\n    save_file({'w': torch.zeros(4)}, sys.argv[1])\n"
              "except Exception as e:\n    print(type(e).__name__, fault_errno(e))")
    proc = subprocess.run([sys.executable, "-c", script, str(locked / "w.safetensors")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, preexec_fn=obey_permissions)
    assert proc.stdout.split() == ["SafetensorError", str(errno.EACCES)], proc


@pytest.mark.skipif(tmpfs_quota_reason() is not None, reason=str(tmpfs_quota_reason()))
def test_an_exhausted_quota_reads_as_edquot(tmpfs):
    disk = tmpfs(8, options="usrquota,usrquota_block_hardlimit=256k")
    script = ("import sys, torch; from safetensors.torch import save_file; from utils.disk_faults import fault_errno\n"
              "try:\n    save_file({'w': torch.zeros(1 << 20)}, sys.argv[1])\n"
              "except Exception as e:\n    print(fault_errno(e))")
    proc = subprocess.run([sys.executable, "-c", script, str(disk / "w.safetensors")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, preexec_fn=obey_quota)
    assert proc.stdout.split() == [str(errno.EDQUOT)], proc


@pytest.mark.parametrize("exc, code", [
    # the quota's forms, as the same libraries word them (where no quota can be mounted, see the test above)
    (Exception("Error while serializing: I/O error: Disk quota exceeded (os error 122)"), errno.EDQUOT),
    (OSError(None, "Error writing bytes to file. Detail: [errno 122] Disk quota exceeded"), errno.EDQUOT),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), None),
    (OSError(errno.EIO, "Input/output error"), None),
    (ValueError("[errno 5] not ours"), None),
])
def test_fault_errno_reads_messages_and_leaves_other_errors_alone(exc, code):
    assert fault_errno(exc) == code


def test_fault_errno_follows_the_context_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as e:
        assert fault_errno(e) == errno.ENOSPC


def test_writing_cleans_up_and_names_what_where_and_the_fix(tmp_path, capsys):
    cleaned = []
    with pytest.raises(DiskFault) as info:
        with writing("the shards", tmp_path, fix="{action} or pass --out_dir", cleanup=lambda: cleaned.append(1)):
            raise Exception("No space left on device (os error 28)")
    assert cleaned == [1] and info.value.errno == errno.ENOSPC
    line = f"no space left on device while writing the shards to {tmp_path}: free space there or pass --out_dir"
    assert error_line(info.value) == line
    assert run_main(lambda argv: (_ for _ in ()).throw(info.value)) == 2
    assert capsys.readouterr().err == f"error: {line}\n"
    with pytest.raises(KeyError):  # not a disk fault: unchanged, but still cleaned up
        with writing("x", tmp_path, cleanup=lambda: cleaned.append(2)):
            raise KeyError("k")
    assert cleaned == [1, 2]


def test_best_effort_reports_once_and_again_when_written():
    said = []
    best = BestEffort(warn=said.append)
    for _ in range(3):
        with best("metrics", "/run/metrics.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert len(said) == 1 and said[0].startswith("no space left on device while writing metrics to /run/metrics.jsonl")
    with best("metrics", "/run/metrics.jsonl"):
        pass
    assert said[1] == "metrics is written again to /run/metrics.jsonl"
    with pytest.raises(ZeroDivisionError), best("metrics", "/run/metrics.jsonl"):
        1 / 0
