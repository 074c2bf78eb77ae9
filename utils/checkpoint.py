"""Atomic, sharded training checkpoints.

Layout under a run directory::

    <out_dir>/ckpt/step_000001000/model.safetensors      rank 0's model state (safetensors)
                                  optim/rank_00000.pt    one file per rank that has optimizer state
                                  trainer_state.json     json-able trainer state (rank 0)
                                  config.json ...        extra_json files (rank 0)
                                  COMPLETE               JSON: every file's relative path, size and sha256
    <out_dir>/ckpt/best/                                 its own copy of the best step's weights (no optimizer), replaced atomically
    <out_dir>/ckpt/.tmp-*                                in-flight or torn writes; removed by the next save

A checkpoint is never written in place. It is built in a hidden temp dir, COMPLETE is written last, every
file and directory is fsync'ed, and only then is the dir renamed to its final name. So a step dir either
does not exist or is complete; a crash leaves at most a `.tmp-*` dir, which resume ignores. Resume still
verifies sizes and sha256 against COMPLETE (bit rot, a copy cut short, a hand-edited file) and skips a
checkpoint that fails, with a warning.
"""
from __future__ import annotations

import base64
import errno
import json
import os
import random
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from utils.fileio import follow_umask, fsync_path, sha256_file, write_file_durable
from utils.run_layout import (BEST_NAME, CKPT_DIRNAME, COMPLETE_NAME, MODEL_NAME, OPTIM_DIRNAME, RANK_STATE_DIRNAME,
                              TMP_PREFIX, TRAINER_STATE_NAME, rank_file_name, rank_of, step_dir_name, step_dirs)

COMPLETE_FORMAT = 1
_RESERVED = {COMPLETE_NAME, MODEL_NAME, TRAINER_STATE_NAME, OPTIM_DIRNAME, RANK_STATE_DIRNAME}


# ----------------------------------------------------------------------------------------------------------
# Verification and discovery (read-only; any rank may call these)
# ----------------------------------------------------------------------------------------------------------

def _read_complete(ckpt_dir: Path) -> tuple[dict | None, str | None]:
    """Parse COMPLETE. Returns (manifest, None) or (None, reason)."""
    path = ckpt_dir / COMPLETE_NAME
    if not path.is_file():
        return None, "no COMPLETE file (write never finished)"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"COMPLETE is unreadable or truncated ({type(e).__name__})"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return None, "COMPLETE has no file list"
    if MODEL_NAME not in files:
        return None, f"COMPLETE does not list {MODEL_NAME}"
    return manifest, None


def _check_checkpoint(ckpt_dir: Path, check_hashes: bool = True) -> str | None:
    """Why `ckpt_dir` is not a loadable checkpoint, or None if it is.

    1. COMPLETE must parse and list model.safetensors.
    2. Every listed file must exist (relative path inside the dir) with the recorded size.
    3. With check_hashes, every file's sha256 must match (nothing is cached: a file can rot between calls).
    """
    manifest, reason = _read_complete(ckpt_dir)
    if reason is not None:
        return reason
    for rel, meta in sorted(manifest["files"].items()):
        if not isinstance(meta, dict) or "size" not in meta or "sha256" not in meta:
            return f"COMPLETE entry for {rel!r} lacks size/sha256"
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            return f"COMPLETE lists a path outside the checkpoint: {rel!r}"
        path = ckpt_dir / rel
        if not path.is_file():
            return f"missing file {rel}"
        size = path.stat().st_size
        if size != meta["size"]:
            return f"{rel} has {size} bytes, COMPLETE says {meta['size']} (truncated or overwritten)"
        if check_hashes and sha256_file(path) != meta["sha256"]:
            return f"{rel} sha256 mismatch (corrupted)"
    return None


def verify_checkpoint(ckpt_dir: str | os.PathLike) -> bool:
    """True if `ckpt_dir` has a valid COMPLETE and every listed file matches its size and sha256."""
    return Path(ckpt_dir).is_dir() and _check_checkpoint(Path(ckpt_dir)) is None


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """Newest step dir under `ckpt_root` that verifies; each one skipped is reported with one warning line."""
    for _, path in step_dirs(Path(ckpt_root)):
        reason = _check_checkpoint(path)
        if reason is None:
            return path
        warnings.warn(f"skipping checkpoint {path}: {reason}", RuntimeWarning, stacklevel=2)
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Turn a user-given path into a verified checkpoint dir.

    1. A dir with COMPLETE (a step dir or best/) → itself, if it verifies.
    2. A run dir (has ckpt/) or a ckpt/ dir itself → its newest verified step dir.
    3. Anything else → ValueError naming the path and what was expected.
    """
    p = Path(path)
    expected = "a run dir (containing ckpt/), a checkpoint dir (containing COMPLETE) or ckpt/best"
    if not p.is_dir():
        raise ValueError(f"checkpoint path {str(p)!r} is not a directory; expected {expected}")
    if (p / COMPLETE_NAME).exists():
        reason = _check_checkpoint(p)
        if reason is not None:
            raise ValueError(f"checkpoint {str(p)!r} is not loadable: {reason}; pick another checkpoint dir")
        return p
    root = p / CKPT_DIRNAME if (p / CKPT_DIRNAME).is_dir() else p
    if not step_dirs(root):
        raise ValueError(f"no checkpoint found at {str(p)!r}; expected {expected}")
    found = latest_checkpoint(root)
    if found is None:
        raise ValueError(f"no complete checkpoint under {str(root)!r} (every step dir is torn or corrupted, "
                         f"see the warnings above); start a fresh run without --resume or restore a backup")
    return found


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------

def load_trainer_state(ckpt_dir: str | os.PathLike) -> dict:
    """The trainer_state.json saved in `ckpt_dir` ({} if the save had none)."""
    path = Path(ckpt_dir) / TRAINER_STATE_NAME
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist; pass a checkpoint dir (see resolve_checkpoint)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_rank_state(ckpt_dir: str | os.PathLike, rank: int) -> dict | None:
    """This rank's comm/rank_*.pt (weights_only), or None when that rank saved none (e.g. another world size)."""
    path = Path(ckpt_dir) / RANK_STATE_DIRNAME / rank_file_name(rank)
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def load_optim_states(ckpt_dir: str | os.PathLike) -> list[dict]:
    """Every saved rank's optimizer state, in rank order ([] if none was saved).

    Ranks that had no state (optim_state None) wrote no file, so the saved ranks need not be contiguous;
    the list holds the files present, sorted by rank. Loaded with weights_only=True onto the CPU.
    """
    optim_dir = Path(ckpt_dir) / OPTIM_DIRNAME
    if not optim_dir.is_dir():
        return []
    ranked = [(rank_of(entry.name), entry) for entry in optim_dir.iterdir() if rank_of(entry.name) is not None]
    return [torch.load(path, map_location="cpu", weights_only=True) for _, path in sorted(ranked)]


# ----------------------------------------------------------------------------------------------------------
# Writing helpers
# ----------------------------------------------------------------------------------------------------------

def _prepare_model_state(model_state: Mapping[str, torch.Tensor], drop_keys: Iterable[str]) -> dict:
    """A safetensors-safe copy of the state dict: CPU, contiguous, no two tensors sharing storage.

    1. Drop every key named in drop_keys (e.g. a tied lm_head.weight the loader re-ties).
    2. Move each tensor to the CPU (a GPU tensor's copy gets its own storage).
    3. Group CPU tensors by storage; keep the first of a group as is and clone the others, because
       safetensors refuses tensors that share memory (tied weights, views of a flat parameter buffer).
    """
    drop = set(drop_keys)
    out: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, t in model_state.items():
        if name in drop:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"model_state[{name!r}] is a {type(t).__name__}; every value must be a torch.Tensor")
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen_storage and t.numel() > 0:
            t = t.clone()
        seen_storage.add(ptr)
        out[name] = t.contiguous()
    return out


def _write_optim(tmp: Path, rank: int, optim_state: dict, dirname: str = OPTIM_DIRNAME) -> None:
    optim_dir = tmp / dirname
    optim_dir.mkdir(exist_ok=True)
    with open(optim_dir / rank_file_name(rank), "wb") as fh:
        torch.save(optim_state, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _write_model(tmp: Path, model_state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path = tmp / MODEL_NAME
    save_file(model_state, str(path), metadata={"format": "pt"})
    follow_umask(path)
    fsync_path(path)


def _json_bytes(obj: Any, what: str) -> bytes:
    try:
        return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serializable: {e}") from e


def _write_complete(tmp: Path, step: int) -> None:
    """List every file under tmp with size and sha256, write COMPLETE last, fsync all dirs."""
    files = {}
    dirs = [tmp]
    for path in sorted(tmp.rglob("*")):
        if path.is_dir():
            dirs.append(path)
            continue
        rel = path.relative_to(tmp).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {"format": COMPLETE_FORMAT, "step": step, "files": files}
    write_file_durable(tmp / COMPLETE_NAME, _json_bytes(manifest, "COMPLETE"))
    for d in reversed(dirs):
        fsync_path(d)


def _publish(tmp: Path, final: Path) -> None:
    """Rename tmp to final; an existing final is renamed aside first and deleted after (never overwritten)."""
    parent = final.parent
    if final.exists():
        aside = parent / f"{TMP_PREFIX}old-{final.name}-{secrets.token_hex(4)}"
        os.rename(final, aside)
        os.rename(tmp, final)
        fsync_path(parent)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_path(parent)


BEST_FILES = (MODEL_NAME, TRAINER_STATE_NAME, "config.json")  # what best/ keeps: the weights, not the optimizer


def _publish_best(step_dir: Path, root: Path, best: Path, step: int) -> None:
    """best/ as its own copy of the step's weights and metadata (no hard links: damage to one is not damage to
    both, and pruning the step never touches it), with its own COMPLETE."""
    tmp = root / f"{TMP_PREFIX}best-{secrets.token_hex(4)}"
    tmp.mkdir()
    for name in BEST_FILES:
        if (step_dir / name).is_file():
            shutil.copyfile(step_dir / name, tmp / name)
            fsync_path(tmp / name)
    _write_complete(tmp, step)
    _publish(tmp, best)


def _state_bytes(state) -> int:
    """Bytes of the tensors in a (nested) state dict."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return 0


def _remove_dir_atomically(path: Path) -> None:
    """Rename a step dir to a .tmp-* name before deleting it: a kill mid-delete leaves no half step dir."""
    doomed = path.parent / f"{TMP_PREFIX}del-{path.name}-{secrets.token_hex(4)}"
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _remove_stale_tmp(parent: Path, prefix: str = TMP_PREFIX) -> None:
    for entry in parent.iterdir():
        if entry.name.startswith(prefix):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def copy_tokenizer(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Copy a tokenizer dir into `<out_dir>/tokenizer/` atomically (rank 0 only). Returns the new dir."""
    src, out = Path(src_dir), Path(out_dir)
    if not src.is_dir():
        raise ValueError(f"tokenizer dir {str(src)!r} does not exist; pass the dir the tokenizer was saved to")
    dest = out / "tokenizer"
    if dest.exists() and dest.resolve() == src.resolve():
        return dest
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out, prefix=f"{TMP_PREFIX}tokenizer-")
    _remove_stale_tmp(out, prefix=f"{TMP_PREFIX}old-tokenizer-")
    tmp = out / f"{TMP_PREFIX}tokenizer-{secrets.token_hex(4)}"
    shutil.copytree(src, tmp)
    for path in sorted(tmp.rglob("*"), reverse=True):
        fsync_path(path)
    fsync_path(tmp)
    _publish(tmp, dest)
    return dest


# ----------------------------------------------------------------------------------------------------------
# The manager
# ----------------------------------------------------------------------------------------------------------

class CheckpointManager:
    """Saves, prunes and finds checkpoints of one run (`<out_dir>/ckpt/`).

    All ranks construct it with the same out_dir and call save() together: save is a collective that
    synchronizes through `barrier` (required when world_size > 1; e.g. DistContext.barrier).
    """

    def __init__(self, out_dir: str | os.PathLike, keep_last_n: int = 2, rank: int = 0, world_size: int = 1,
                 barrier: Callable[[], None] | None = None):
        if not isinstance(keep_last_n, int) or keep_last_n < 2:
            raise ValueError(f"keep_last_n must be an int >= 2 so a torn newest checkpoint still leaves one to "
                             f"resume from (got {keep_last_n!r}); set --keep_last_n=2 or more")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) \
                or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size (got rank={rank!r}, world_size={world_size!r})")
        if world_size > 1 and barrier is None:
            raise ValueError(f"world_size={world_size} needs a barrier callable (e.g. ctx.barrier) so ranks "
                             f"write into the same temp dir in order")
        self.out_dir = Path(out_dir)
        self.ckpt_root = self.out_dir / CKPT_DIRNAME
        self.keep_last_n = keep_last_n
        self.rank = rank
        self.world_size = world_size
        self._barrier = barrier if barrier is not None else (lambda: None)

    @property
    def best_dir(self) -> Path:
        return self.ckpt_root / BEST_NAME

    def latest(self) -> Path | None:
        """Newest complete, verified step dir (torn or corrupt ones are skipped with a warning), or None."""
        return latest_checkpoint(self.ckpt_root)

    def remove_stale_tmp(self) -> None:
        """Delete the .tmp-* dirs a killed save left behind (rank 0, before the run writes anything else), so a
        torn save never keeps filling the disk."""
        if self.rank == 0 and self.ckpt_root.is_dir():
            _remove_stale_tmp(self.ckpt_root)

    def save(self, step: int, model_state: Mapping[str, torch.Tensor], optim_state: dict | None = None,
             trainer_state: dict | None = None, extra_json: Mapping[str, dict] | None = None,
             is_best: bool = False, drop_keys: Iterable[str] = (), rank_state: dict | None = None) -> Path:
        """Write checkpoint `step` (collective: every rank calls it). Returns the final step dir.

        1. Every rank validates its arguments (same checks everywhere, so all ranks fail alike).
        2. Rank 0 removes stale .tmp-* dirs and creates `.tmp-step_XXXXXXXXX-<random>`; barrier.
        3. Every rank finds that dir and writes optim/rank_{rank:05d}.pt if it has optimizer state, and
           comm/rank_{rank:05d}.pt if it has rank_state (its comm hook's state); barrier.
        4. Rank 0 writes model.safetensors, trainer_state.json and extra_json files, then COMPLETE (sizes and
           sha256 of all files) last, fsyncs, renames the dir into place (swapping out an old dir of the same
           step), refreshes best/ when is_best, and prunes to keep_last_n; final barrier.
        A full disk (ENOSPC, EDQUOT) removes this save's temp files, keeps every earlier checkpoint, and raises
        an OSError whose message says how much space the checkpoint needs.
        """
        extra = self._validate(step, extra_json)
        try:
            return self._save(step, model_state, optim_state, trainer_state, extra, is_best, drop_keys, rank_state)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            _remove_stale_tmp(self.ckpt_root, prefix=f"{TMP_PREFIX}{step_dir_name(step)}-")
            need = _state_bytes(model_state) + _state_bytes(optim_state) * self.world_size
            raise OSError(e.errno, f"no space left on device while writing checkpoint step {step} to "
                                   f"{self.ckpt_root} (need about {need / 1e9:.2f} GB)") from e

    def _save(self, step: int, model_state, optim_state, trainer_state, extra: dict, is_best: bool,
              drop_keys, rank_state) -> Path:
        tmp_name = f"{TMP_PREFIX}{step_dir_name(step)}-"
        if self.rank == 0:
            self.ckpt_root.mkdir(parents=True, exist_ok=True)
            _remove_stale_tmp(self.ckpt_root)
            (self.ckpt_root / f"{tmp_name}{secrets.token_hex(4)}").mkdir()
        self._barrier()
        tmp = self._find_tmp(tmp_name)
        if optim_state is not None:
            _write_optim(tmp, self.rank, optim_state)
        if rank_state is not None:
            _write_optim(tmp, self.rank, rank_state, RANK_STATE_DIRNAME)
        self._barrier()
        final = self.ckpt_root / step_dir_name(step)
        if self.rank == 0:
            self._finish_on_rank0(tmp, final, step, model_state, trainer_state, extra, is_best, drop_keys)
        self._barrier()
        return final

    def _validate(self, step: int, extra_json: Mapping[str, dict] | None) -> dict:
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"checkpoint step must be an int >= 0 (got {step!r})")
        extra = dict(extra_json or {})
        for name in extra:
            if not isinstance(name, str) or "/" in name or name.startswith(".") or name in _RESERVED:
                raise ValueError(f"extra_json name {name!r} must be a plain file name, not hidden and not one of "
                                 f"{sorted(_RESERVED)}; rename it (e.g. 'config.json')")
        return extra

    def _find_tmp(self, tmp_name: str) -> Path:
        """The temp dir rank 0 made for this save (it removed every stale one first, so there is one)."""
        found = [p for p in self.ckpt_root.iterdir() if p.name.startswith(tmp_name)]
        if len(found) != 1:
            raise RuntimeError(f"rank {self.rank}: expected one {tmp_name}* dir in {self.ckpt_root}, found "
                               f"{[p.name for p in found]}; is another process saving into the same out_dir?")
        return found[0]

    def _finish_on_rank0(self, tmp: Path, final: Path, step: int, model_state, trainer_state, extra: dict,
                         is_best: bool, drop_keys: Iterable[str]) -> None:
        _write_model(tmp, _prepare_model_state(model_state, drop_keys))
        write_file_durable(tmp / TRAINER_STATE_NAME, _json_bytes(trainer_state or {}, "trainer_state"))
        for name, obj in sorted(extra.items()):
            write_file_durable(tmp / name, _json_bytes(obj, f"extra_json[{name!r}]"))
        _write_complete(tmp, step)
        _publish(tmp, final)
        if is_best:
            _publish_best(final, self.ckpt_root, self.best_dir, step)
        self._prune(step)

    def _prune(self, current_step: int) -> None:
        """Keep the newest keep_last_n complete step dirs at or below current_step; delete older ones.

        Dirs newer than current_step (left by a run this one did not resume from) are not touched here, but
        latest() would prefer them, so they are reported. Completeness here checks sizes only; a full hash
        of every kept checkpoint on each save would cost more than the save.
        """
        kept = 0
        for step, path in step_dirs(self.ckpt_root):
            if step > current_step:
                warnings.warn(f"checkpoint {path} is newer than the step just saved ({current_step}); resume "
                              f"would pick it. Delete it if it belongs to an abandoned run", RuntimeWarning)
                continue
            if kept >= self.keep_last_n:
                _remove_dir_atomically(path)
            elif _check_checkpoint(path, check_hashes=False) is None:
                kept += 1
        fsync_path(self.ckpt_root)


# ----------------------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------------------

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def get_rng_state() -> dict:
    """Every RNG this process uses, as a JSON-able dict: Python, NumPy (legacy global), torch CPU, CUDA (all)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch_cpu": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what get_rng_state() returned, exactly. CUDA states are restored for the devices both have."""
    missing = {"python", "numpy", "torch_cpu"} - set(state)
    if missing:
        raise ValueError(f"RNG state lacks {sorted(missing)}; pass a dict made by get_rng_state()")
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], np.asarray(npst["keys"], dtype=np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(_unb64(state["torch_cpu"]))
    cuda_states = state.get("torch_cuda")
    if cuda_states and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda_states) != n:
            warnings.warn(f"RNG state has {len(cuda_states)} CUDA devices, this process sees {n}; restoring the "
                          f"first {min(n, len(cuda_states))}", RuntimeWarning)
        for i, s in enumerate(cuda_states[:n]):
            torch.cuda.set_rng_state(_unb64(s), i)
