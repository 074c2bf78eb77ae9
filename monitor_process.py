"""Supervise a training command: restart it when a restart can help, stop at once when it cannot.

    python monitor_process.py [options] -- <training command...>

Example:
    python monitor_process.py --max_restarts=5 -- torchrun --nproc_per_node=8 train.py configs/z2all_1b.py \\
        --out_dir=runs/1b

1. Start the command in its own process group (so torchrun and all its workers can be stopped together), with
   TORCH_ELASTIC_SHUTDOWN_TIMEOUT set to 90% of --kill_grace_s unless already set: torchrun's agent then gives
   its workers (which run in sessions of their own, out of our reach) that long to save after a SIGTERM, and
   still kills a worker that did not finish before we kill the agent.
2. Poll it. The run has hung when its heartbeat (<out_dir>/heartbeat.json, utils/heartbeat.py) is older than
   the timeout of the section it is in: --hang_timeout_s for step and eval, --startup_timeout_s for startup
   (and until this attempt's first heartbeat), --save_timeout_s for checkpoint. A hung run is stopped: SIGTERM
   (and SIGCONT, so a stopped process can act on it) to its process group, SIGKILL after --kill_grace_s.
3. When it exits, its code is the process exit code, unless <out_dir>/exit_status.json (utils/run_status.py),
   written since the attempt started, holds a non-zero code: under torchrun the agent exits 1 whatever its
   workers' codes were. After a non-zero exit without that file, wait up to --status_wait_s for it (rank 0 may
   run on another node, whose writes a shared file system shows late).
4. Then, by code (utils/exit_codes.py):
   - OK: done, exit 0.
   - USER_ERROR, NAN, CANNOT_EXECUTE, NOT_FOUND: they will only repeat, so stop at once with that code and one
     line that says why. A command that cannot start is never retried (with --resume or without).
   - PREEMPTED (SIGTERM, state saved): resume at once, with no backoff and not counted as a failure, when the
     attempt wrote a checkpoint; an attempt that saved nothing is treated as a crash, so a run that exits
     PREEMPTED in a loop is still bounded by --max_restarts.
   - SPIKE: roll back (steps 6-7), at most --max_rollbacks times, at once; then stop with SPIKE.
   - anything else (CRASH, a signal, a hang): wait backoff_s * 2^(k-1) (at most max_backoff_s) and resume,
     for k = 1..max_restarts failures in a row. An attempt that wrote a new checkpoint made progress: the
     count (and the backoff) starts again from zero, so a job of weeks is not ended by rare crashes.
5. The resume command is the original with `--resume` appended once. For train.py, which reads its config from
   <out_dir>/exp_config.json on resume, a positional CONFIG.py after train.py is dropped, and so are
   --resume_step and --skip_data_to (a restart resumes from the newest checkpoint). If <out_dir> holds no
   complete checkpoint yet, the original command is rerun instead (there is nothing to resume from).
6. A rollback moves the checkpoints written at or after the spike's start_iter out of <out_dir>/ckpt into
   <out_dir>/rolled_back/rollback_<k>/ (kept, but no resume can pick them), takes the newest complete
   checkpoint left (step S < start_iter) and resumes with `--resume --resume_step=S --skip_data_to=C`, where
   C = the spike's consumed_end: the data from S's position up to C (the spike window included) is skipped.
   The data position stays exact, so a rollback run is reproducible; hence a rollback to a step and data
   position already tried would only replay the same spike, and the monitor stops instead.
7. Restarts after a rollback keep --resume_step=S --skip_data_to=C until the run writes a checkpoint of its
   own; from then on that checkpoint holds the new data position and a plain --resume is right.
8. SIGTERM, SIGINT or SIGHUP to the monitor: forward SIGTERM to the group and wait --kill_grace_s for the run
   to save (a second SIGINT kills at once). Exit PREEMPTED if the run says it saved, else 128+signal.
Every event (start, exit code, reason, restart, rollback) is logged with a timestamp to stderr and to
--log_file, by default <out_dir>/monitor.log (lines wait in memory until train.py has created <out_dir>).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from utils import exit_codes as ec
from utils.cli import ArgumentParser
from utils.proctree import become_subreaper, descendants, kill_descendants
from utils.heartbeat import CHECKPOINT, STARTUP, read_heartbeat
from utils.run_layout import (COMPLETE_NAME, EXP_CONFIG_NAME, HEARTBEAT_NAME, MONITOR_LOG_NAME, ROLLED_BACK_DIRNAME,
                              ckpt_root, published_steps, step_dirs)
from utils.run_status import ExitStatus, SpikeWindow, read_exit_status

USAGE = "python monitor_process.py [options] -- <training command...>"
ROLLBACK_FLAGS = ("--resume_step", "--skip_data_to")
SHUTDOWN_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"


@dataclass
class Options:
    max_restarts: int
    max_rollbacks: int
    hang_timeout_s: float
    startup_timeout_s: float
    save_timeout_s: float
    heartbeat: str | None
    backoff_s: float
    max_backoff_s: float
    kill_grace_s: float
    status_wait_s: float
    poll_s: float
    log_file: str | None


@dataclass
class Attempt:
    """How one run of the command ended."""
    number: int
    started: float
    code: int
    reason: str = ""
    status: ExitStatus | None = None


@dataclass
class Rollback:
    """The flags of the last rollback, kept for restarts until the run writes a checkpoint after `since`."""
    step: int
    skip_data_to: int
    since: float


class Monitor:
    def __init__(self, cmd: list[str], opts: Options):
        self.cmd = cmd
        self.opts = opts
        self.out_dir = _flag_value(cmd, "--out_dir")
        if opts.heartbeat is None and self.out_dir is not None:
            opts.heartbeat = os.path.join(self.out_dir, HEARTBEAT_NAME)
        if opts.log_file is None and self.out_dir is not None:
            opts.log_file = os.path.join(self.out_dir, MONITOR_LOG_NAME)
        self.host = socket.gethostname()
        self.stop_signal: int | None = None
        self.kill_now = False
        self.failures = 0
        # the command-line monitor adopts the attempt's orphans (main() makes it a subreaper), so it can kill the
        # workers a dead torchrun agent leaves behind; a Monitor built in another program never kills beyond its child
        self.reaper = False
        self.rollbacks = 0
        self.rollback: Rollback | None = None
        self.rolled_back_to: set[tuple[int, int]] = set()  # (step, skip_data_to) of every rollback so far
        self._pending: list[str] = []

    # -- logging and signals -------------------------------------------------------------------

    def log(self, msg: str) -> None:
        """One timestamped line to stderr and the log file. The host is named because the monitors of all
        nodes of a multi-node run append to one monitor.log. Lines wait in memory until the log's directory
        exists: the run directory is train.py's to create, after its checks pass."""
        line = f"[monitor {self.host} {time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        try:
            print(line, file=sys.stderr, flush=True)
        except OSError:
            pass  # a closed terminal must not end the supervision
        if self.opts.log_file:
            self._pending.append(line)
            self._flush_log()

    def _flush_log(self) -> None:
        path = Path(self.opts.log_file)
        if not path.parent.is_dir():
            return
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write("".join(p + "\n" for p in self._pending))
        except OSError as e:  # a full disk must not end the supervision either
            self.opts.log_file = None
            self.log(f"cannot append to {path} ({e}); logging to stderr only")
        self._pending.clear()

    def _on_signal(self, signum, _frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            self.kill_now = True
        if self.stop_signal is None:
            self.stop_signal = signum

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        """The supervision loop (module docstring). Returns the monitor's exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        o = self.opts
        hang = (f"hang timeouts step/eval {o.hang_timeout_s:g}s, startup {o.startup_timeout_s:g}s, checkpoint "
                f"{o.save_timeout_s:g}s on {o.heartbeat}") if o.heartbeat else "no hang detection (no heartbeat)"
        self.log(f"supervising (max_restarts={o.max_restarts}, max_rollbacks={o.max_rollbacks}, {hang})")
        cmd, number = self.cmd, 1
        while True:
            attempt = self.run_once(cmd, number)
            if self.stop_signal is not None:
                return self._stopped(attempt)
            nxt = self.next_step(attempt)
            if isinstance(nxt, int):
                return nxt
            cmd, delay = nxt
            if delay > 0 and not self._sleep(delay):
                return self._stopped(None)
            number += 1

    def next_step(self, attempt: Attempt) -> int | tuple[list[str], float]:
        """The monitor's exit code, or (the next command, the delay before it): step 4 of the module docstring."""
        code, why = attempt.code, f"{ec.describe(attempt.code)}" + (f": {attempt.reason}" if attempt.reason else "")
        if code == ec.OK:
            self.log("training command finished with exit code 0")
            return ec.OK
        if code in ec.STOP_AT_ONCE:
            self.log(f"stopping: {why}; a restart would fail the same way")
            return code
        if code == ec.SPIKE:
            return self.roll_back(attempt)
        progressed = self._checkpoint_written_since(attempt.started)
        if code == ec.PREEMPTED and progressed:
            self.failures = 0
            self.log("the run was preempted and saved: resuming at once (not counted as a failure)")
            return self.resume_command(), 0.0
        if progressed:
            self.failures = 0
        elif code == ec.PREEMPTED:
            self.log("the run exited PREEMPTED but wrote no checkpoint: counted as a failure")
        if self.failures >= self.opts.max_restarts:
            self.log(f"giving up after {why}: {self.failures} restart(s) in a row without a new checkpoint, "
                     f"max_restarts={self.opts.max_restarts}")
            return code
        self.failures += 1
        delay = min(self.opts.backoff_s * 2 ** (self.failures - 1), self.opts.max_backoff_s)
        self.log(f"restart {self.failures}/{self.opts.max_restarts} in {delay:g}s")
        return self.resume_command(), delay

    def _stopped(self, attempt: Attempt | None) -> int:
        """Exit code after a signal to the monitor (step 8)."""
        name = signal.Signals(self.stop_signal).name
        if attempt is not None and attempt.code == ec.PREEMPTED:
            self.log(f"stopped by {name}; the run saved its state: continue it with --resume")
            return ec.PREEMPTED
        self.log(f"stopped by {name}")
        return 128 + self.stop_signal

    def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early (returning False) if the monitor is told to stop."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.stop_signal is not None:
                return False
            time.sleep(min(self.opts.poll_s, max(0.0, end - time.monotonic())))
        return self.stop_signal is None

    # -- one attempt ---------------------------------------------------------------------------

    def run_once(self, cmd: list[str], number: int) -> Attempt:
        """Run one attempt to its end (steps 1-3)."""
        start = time.time()
        self.log(f"attempt {number} start: {shlex.join(cmd)}")
        try:
            proc = subprocess.Popen(cmd, start_new_session=True, env=self._child_env())
        except OSError as e:
            code = ec.NOT_FOUND if isinstance(e, FileNotFoundError) else ec.CANNOT_EXECUTE
            self.log(f"attempt {number} cannot start: {e}")
            return Attempt(number, start, code, str(e))
        hang = self._watch(proc, start)
        _signal_group(proc.pid, signal.SIGKILL)  # orphans of the attempt (stuck workers holding GPUs) must go
        left = kill_descendants() if self.reaper else []  # torchrun's workers outlive their agent's group
        if left:
            self.log(f"killed {len(left)} process(es) the attempt left behind: {left}")
        rc = proc.returncode
        attempt = Attempt(number, start, rc if rc >= 0 else 128 - rc, hang or "")
        if hang is None:
            self._read_status(attempt)
        self.log(f"attempt {number} exited: {ec.describe(attempt.code)} after {time.time() - start:.1f}s"
                 + (f" (process exit code {rc})" if attempt.code != rc else "")
                 + (f": {attempt.reason}" if attempt.reason else ""))
        return attempt

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault(SHUTDOWN_ENV, str(max(1, int(self.opts.kill_grace_s * 0.9))))
        return env

    def _watch(self, proc: subprocess.Popen, start: float) -> str | None:
        """Poll until the attempt exits; stop it on a hang or a signal. Returns the hang, if it hung."""
        while True:
            try:
                proc.wait(timeout=self.opts.poll_s)
                return None
            except subprocess.TimeoutExpired:
                pass
            if self.stop_signal is not None:
                self.stop_group(proc, f"the monitor got {signal.Signals(self.stop_signal).name}")
                return None
            hang = self.hang(start)
            if hang is not None:
                self.stop_group(proc, hang)
                return hang

    def hang(self, start: float) -> str | None:
        """A description of the hang, or None while the heartbeat is fresh for its section (step 2)."""
        if not self.opts.heartbeat:
            return None
        beat = read_heartbeat(self.opts.heartbeat)
        if beat is not None and beat["time"] < start:
            beat = None  # an earlier attempt's: this one has not beaten yet
        section = beat["section"] if beat else STARTUP
        flag, timeout = self._timeout(section)
        age = time.time() - (beat["time"] if beat else start)
        if timeout <= 0 or age <= timeout:
            return None
        where = (f"in {section} for {time.time() - beat['section_start']:.1f}s, last heartbeat at iter "
                 f"{beat.get('iter')}") if beat else "no heartbeat yet"
        return f"hang: no heartbeat for {age:.1f}s > {flag}={timeout:g} ({where})"

    def _timeout(self, section: str) -> tuple[str, float]:
        if section == STARTUP:
            return "--startup_timeout_s", self.opts.startup_timeout_s
        if section == CHECKPOINT:
            return "--save_timeout_s", self.opts.save_timeout_s
        return "--hang_timeout_s", self.opts.hang_timeout_s  # step, eval, and a section newer than this monitor

    def stop_group(self, proc: subprocess.Popen, why: str) -> None:
        """SIGTERM the attempt's process group (SIGCONT too: a stopped process acts on nothing), then SIGKILL
        whatever is left after kill_grace_s, or at once on a second SIGINT."""
        self.log(f"stopping attempt (pid {proc.pid}): {why}; SIGTERM, then SIGKILL after {self.opts.kill_grace_s:g}s")
        _signal_group(proc.pid, signal.SIGTERM)
        _signal_group(proc.pid, signal.SIGCONT)
        end = time.monotonic() + self.opts.kill_grace_s
        while proc.poll() is None and time.monotonic() < end and not self.kill_now:
            try:
                proc.wait(timeout=min(self.opts.poll_s, max(0.0, end - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            self.log("second SIGINT: sending SIGKILL" if self.kill_now
                     else f"no exit {self.opts.kill_grace_s:g}s after SIGTERM; sending SIGKILL")
        doomed = descendants(proc.pid)  # read before the agent dies: then its workers are no longer below it
        _signal_group(proc.pid, signal.SIGKILL)
        for p in doomed:
            _signal_pid(p, signal.SIGKILL)
        proc.wait()

    def _read_status(self, attempt: Attempt) -> None:
        """Take the code and reason from a fresh exit_status.json (step 3)."""
        if self.out_dir is None or attempt.code in (ec.CANNOT_EXECUTE, ec.NOT_FOUND):
            return
        deadline = time.monotonic() + (self.opts.status_wait_s if attempt.code != ec.OK else 0.0)
        while True:
            try:
                status = read_exit_status(self.out_dir, since=attempt.started)
            except ValueError as e:
                self.log(f"ignoring the exit status: {e}")
                return
            if status is not None or time.monotonic() >= deadline or self.stop_signal is not None:
                break
            time.sleep(min(self.opts.poll_s, 0.5))
        if status is None:
            return
        attempt.status, attempt.reason = status, status.reason
        if attempt.code != ec.OK and status.code != ec.OK:  # rank 0 saying OK does not vouch for the others
            attempt.code = status.code

    # -- restarts and rollbacks ----------------------------------------------------------------

    def resume_command(self) -> list[str]:
        """The command for a restart (steps 5 and 7)."""
        if self.out_dir is not None and not published_steps(self.out_dir):
            self.log(f"no complete checkpoint in {self.out_dir}/ckpt yet: rerunning the original command")
            return list(self.cmd)
        cmd = [a for a in self.cmd if _flag_name(a) not in ROLLBACK_FLAGS]
        script = next((i for i, a in enumerate(cmd) if os.path.basename(a) == "train.py"), None)
        if script is not None:
            dropped = [a for a in cmd[script + 1:] if a.endswith(".py") and not a.startswith("-")]
            if dropped:
                self.log(f"resume: dropping {dropped} (train.py --resume reads <out_dir>/{EXP_CONFIG_NAME})")
            cmd = cmd[:script + 1] + [a for a in cmd[script + 1:] if a not in dropped]
            if self.out_dir is None:
                self.log("warning: the command has no --out_dir=RUN; train.py --resume needs it")
        if "--resume" not in cmd and not any(a.startswith("--resume=") for a in cmd):
            cmd.append("--resume")
        if self.rollback is not None and self._checkpoint_written_since(self.rollback.since):
            self.rollback = None  # the run saved past the rollback: that checkpoint has the new data position
        if self.rollback is not None:
            cmd += [f"--resume_step={self.rollback.step}", f"--skip_data_to={self.rollback.skip_data_to}"]
        return cmd

    def roll_back(self, attempt: Attempt) -> int | tuple[list[str], float]:
        """Resume from before a loss spike, skipping its data (steps 6-7). Returns SPIKE when it cannot."""
        spike = attempt.status.spike if attempt.status is not None else None
        if spike is None or self.out_dir is None:
            self.log("stopping: exit code 4 (SPIKE) without a spike window in <out_dir>/exit_status.json")
            return ec.SPIKE
        what = f"loss spike at iters {spike.start_iter}..{spike.end_iter}"
        if self.rollbacks >= self.opts.max_rollbacks:
            self.log(f"stopping: {what}, and max_rollbacks={self.opts.max_rollbacks} rollback(s) are used up")
            return ec.SPIKE
        target = self._checkpoint_before(spike.start_iter)
        if target is None:
            self.log(f"stopping: {what}, and no complete checkpoint before iter {spike.start_iter} is left to "
                     f"roll back to (keep more with --keep_last_n, or save more often)")
            return ec.SPIKE
        step, position = target
        if (step, spike.consumed_end) in self.rolled_back_to:
            self.log(f"stopping: {what}, and a rollback to step {step} skipping to {spike.consumed_end} was "
                     f"already tried: the same start and data give the same run")
            return ec.SPIKE
        self.rollbacks += 1
        if not self._set_aside(spike):
            return ec.SPIKE
        self.rolled_back_to.add((step, spike.consumed_end))
        frm = f"data position {position}" if position is not None else f"step {step}'s data position"
        self.log(f"rollback {self.rollbacks}/{self.opts.max_rollbacks}: {what} ({attempt.reason}); resuming from "
                 f"step {step}, skipping the data from {frm} to {spike.consumed_end} (spike window "
                 f"{spike.consumed_start}..{spike.consumed_end})")
        self.rollback = Rollback(step, spike.consumed_end, time.time())
        return self.resume_command(), 0.0

    def _checkpoint_before(self, start_iter: int) -> tuple[int, int | None] | None:
        """(step, its data position if recorded) of the newest checkpoint before start_iter that verifies
        (sizes and sha256 against its COMPLETE, as train.py checks them); None if there is none."""
        from utils.checkpoint import load_trainer_state, verify_checkpoint  # torch: only a rollback pays for it
        for step, path in step_dirs(ckpt_root(self.out_dir)):
            if step >= start_iter:
                continue
            if not verify_checkpoint(path):
                self.log(f"rollback: skipping {path}: it does not verify against its COMPLETE (torn or corrupted)")
                continue
            try:
                position = load_trainer_state(path).get("consumed_micro_batches")
            except ValueError:
                position = None
            return step, position
        return None

    def _set_aside(self, spike: SpikeWindow) -> bool:
        """Move the step dirs written at or after the spike's start out of ckpt/ (step 6), logging each.
        False (logged) if one cannot be moved: a later --resume could pick it."""
        dest = Path(self.out_dir) / ROLLED_BACK_DIRNAME / f"rollback_{self.rollbacks}"
        for step, path in step_dirs(ckpt_root(self.out_dir)):
            if step < spike.start_iter:
                continue
            dest.mkdir(parents=True, exist_ok=True)
            try:
                path.rename(dest / path.name)
            except FileNotFoundError:
                continue  # another node's monitor moved it first
            except OSError as e:
                self.log(f"stopping: cannot move {path} (written during the spike) aside: {e}")
                return False
            self.log(f"rollback: moved {path} (written during the spike) to {dest / path.name}")
        return True

    def _checkpoint_written_since(self, since: float) -> bool:
        """Whether a complete step checkpoint was written at or after `since` (its COMPLETE's mtime)."""
        if self.out_dir is None:
            return False
        return any((p / COMPLETE_NAME).stat().st_mtime >= since for _, p in published_steps(self.out_dir))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def _flag_value(cmd: list[str], flag: str) -> str | None:
    """The value of `--flag=V` or `--flag V` in cmd (the last one wins, as in train.py), else None."""
    value = None
    for i, arg in enumerate(cmd):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(cmd):
            value = cmd[i + 1]
    return value


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as the description, and each option's default after its help (the options
    without one say what they default to)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, argparse.SUPPRESS):
            return action.help
        return f"{action.help} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="monitor_process.py", usage=USAGE, description=__doc__, formatter_class=_HelpFormatter)
    add = p.add_argument
    add("--max_restarts", type=int, metavar="N", default=10,
        help="crash or hang restarts in a row without a new checkpoint before giving up")
    add("--max_rollbacks", type=int, metavar="N", default=3,
        help="loss-spike rollbacks (exit code 4) before stopping (0: none)")
    add("--hang_timeout_s", type=float, metavar="S", default=1800.0,
        help="seconds without a heartbeat in the step or eval section before the run counts as hung (0: off)")
    add("--startup_timeout_s", type=float, metavar="S", default=3600.0,
        help="the same for start-up: until the attempt's first heartbeat, and in the startup section (0: off)")
    add("--save_timeout_s", type=float, metavar="S", default=3600.0,
        help="the same while the run writes a checkpoint (the checkpoint section) (0: off)")
    add("--heartbeat", default=None, metavar="PATH",
        help="heartbeat file (default: <out_dir>/heartbeat.json of the command)")
    add("--backoff_s", type=float, metavar="S", default=10.0,
        help="wait before the first restart, doubled after each failure")
    add("--max_backoff_s", type=float, metavar="S", default=300.0, help="longest wait between restarts")
    add("--kill_grace_s", type=float, metavar="S", default=600.0,
        help="SIGTERM to SIGKILL delay: the time the run has to save a checkpoint when stopped")
    add("--status_wait_s", type=float, metavar="S", default=10.0,
        help="after a failed exit, how long to wait for <out_dir>/exit_status.json (rank 0 on another node)")
    add("--poll_s", type=float, metavar="S", default=1.0, help="how often to check the command (seconds)")
    add("--log_file", default=None, metavar="PATH", help="also append the log here (default: <out_dir>/monitor.log)")
    return p


def parse_args(argv: list[str]) -> tuple[Options, list[str]]:
    """(options, training command). Raises ValueError (one line) on a bad command line; --help exits 0."""
    split = argv.index("--") if "--" in argv else len(argv)
    ns = build_parser().parse_args(argv[:split])
    cmd = argv[split + 1:]
    if split == len(argv):
        raise ValueError(f"monitor_process.py: no training command: put it after '--', as in: {USAGE}")
    if not cmd:
        raise ValueError(f"monitor_process.py: the training command after '--' is empty; usage: {USAGE}")
    for name in ("max_restarts", "max_rollbacks", "hang_timeout_s", "startup_timeout_s", "save_timeout_s",
                 "backoff_s", "max_backoff_s", "kill_grace_s", "status_wait_s"):
        if getattr(ns, name) < 0:
            raise ValueError(f"monitor_process.py: --{name} must be >= 0 (got {getattr(ns, name)})")
    if ns.poll_s <= 0:
        raise ValueError(f"monitor_process.py: --poll_s must be > 0 (got {ns.poll_s})")
    return Options(**vars(ns)), cmd


def main(argv: list[str] | None = None) -> int:
    try:
        opts, cmd = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return ec.USER_ERROR
    monitor = Monitor(cmd, opts)
    monitor.reaper = become_subreaper()
    return monitor.run()


if __name__ == "__main__":
    sys.exit(main())
