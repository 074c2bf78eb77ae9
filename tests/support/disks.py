"""Real disk faults for tests: a size-limited tmpfs, filled to leave K bytes, a read-only mount, and processes that
obey file permissions although they run as root.

They need root and mount(8) on Linux, as CI has (it runs as root on a 2-core Linux machine); `needs_mount` skips
with the reason where they do not work. Every mount is undone by the fixture that made it, also when the test
fails (a lazy unmount if a process still holds a file there).

- ``tmpfs`` (fixture): ``tmpfs(size_mb, name="disk") -> Path``, a fresh tmpfs of that size under tmp_path.
- ``fill(path, leave=0) -> Path``: a file on path's file system that leaves `leave` bytes free (rounded to pages);
  remove it to give the space back.
- ``read_only`` (fixture): ``read_only(path)`` bind-mounts path read-only onto itself.
- ``obey_permissions``: a subprocess preexec_fn that drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so a root
  process meets EACCES on a file without its read bit (root reads anything otherwise); ``needs_permissions`` skips
  where that does not work. ``obey_quota`` drops CAP_SYS_RESOURCE, so a quota applies to it.
- ``tmpfs_quota_reason()``: why a tmpfs with a block quota cannot be mounted here (None if it can).
"""
from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import tempfile
from pathlib import Path

import pytest


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # busy: detach now, free when released


@functools.lru_cache(maxsize=None)
def mount_unavailable() -> str | None:
    """Why a tmpfs cannot be mounted here, or None."""
    if os.name != "posix" or not os.path.isdir("/proc"):
        return "tmpfs mounts need Linux"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CI runs the tests as root)"
    with tempfile.TemporaryDirectory() as d:
        try:
            probe = _mount("-t", "tmpfs", "-o", "size=1M", "tmpfs", d)
        except FileNotFoundError:
            return "mount(8) is not installed"
        if probe.returncode != 0:
            return f"mount -t tmpfs failed: {probe.stderr.strip()}"
        _umount(Path(d))
    return None


needs_mount = pytest.mark.skipif(mount_unavailable() is not None, reason=str(mount_unavailable()))


@pytest.fixture
def tmpfs(tmp_path):
    mounted: list[Path] = []

    def make(size_mb: float, name: str = "disk", options: str = "") -> Path:
        path = tmp_path / name
        path.mkdir()
        opts = f"size={int(size_mb * 1024)}k,mode=0755" + (f",{options}" if options else "")
        result = _mount("-t", "tmpfs", "-o", opts, "tmpfs", str(path))
        if result.returncode != 0:
            raise RuntimeError(f"mount -t tmpfs -o {opts} failed: {result.stderr.strip()}")
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        _umount(path)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, leave: int = 0) -> Path:
    """A file on path's file system that leaves about `leave` bytes free (tmpfs counts whole pages)."""
    filler = Path(path) / f".fill-{os.getpid()}-{len(os.listdir(path))}"
    size = free_bytes(path) - leave
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if size > 0:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def read_only():
    mounted: list[Path] = []

    def make(path) -> Path:
        path = Path(path)
        for args in (("--bind", str(path), str(path)), ("-o", "remount,bind,ro", str(path))):
            result = _mount(*args)
            if result.returncode != 0:
                if mounted and mounted[-1] == path:
                    _umount(path)
                raise RuntimeError(f"mount {' '.join(args)} failed: {result.stderr.strip()}")
            if args[0] == "--bind":
                mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        _umount(path)


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_SYS_RESOURCE = 1, 2, 24


def _drop(*caps: int) -> None:
    if os.geteuid() != 0:
        return  # not root: file modes and quotas apply already
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in caps:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def obey_permissions() -> None:
    """preexec_fn: drop root's permission override from the bounding set, so the exec'ed process checks file modes
    like any user (its uid stays 0: it can still read the interpreter under /root)."""
    _drop(_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH)


def obey_quota() -> None:
    """preexec_fn: drop root's exemption from disk quotas (CAP_SYS_RESOURCE)."""
    _drop(_CAP_SYS_RESOURCE)


@functools.lru_cache(maxsize=None)
def permissions_unenforceable() -> str | None:
    """Why a child made with obey_permissions would still read a file without its read bit, or None."""
    with tempfile.TemporaryDirectory() as d:
        locked = Path(d) / "locked"
        locked.write_text("secret")
        locked.chmod(0)
        try:
            probe = subprocess.run(["cat", str(locked)], capture_output=True, text=True, preexec_fn=obey_permissions)
        except (OSError, subprocess.SubprocessError) as e:
            return f"cannot start a process without root's permission override: {e}"
    if probe.returncode == 0:
        return "a process without CAP_DAC_OVERRIDE still read a file of mode 000 here"
    return None


needs_permissions = pytest.mark.skipif(permissions_unenforceable() is not None, reason=str(permissions_unenforceable()))


@functools.lru_cache(maxsize=None)
def tmpfs_quota_reason() -> str | None:
    """Why a tmpfs with a block quota (the only quota a test can mount without tools) cannot be had here, or None."""
    reason = mount_unavailable()
    if reason is not None:
        return reason
    with tempfile.TemporaryDirectory() as d:
        probe = _mount("-t", "tmpfs", "-o", "size=4M,usrquota,usrquota_block_hardlimit=1M", "tmpfs", d)
        if probe.returncode != 0:
            return ("this kernel mounts no tmpfs with quotas (CONFIG_TMPFS_QUOTA is off); EDQUOT is checked on the "
                    "messages the libraries give for it instead")
        _umount(Path(d))
    return None
