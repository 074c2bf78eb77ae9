"""Supervise a training command: restart it with --resume when it crashes or hangs.

    python monitor_process.py [--max_restarts=N] [--hang_timeout_s=S] [--heartbeat=PATH] [--backoff_s=S]
                              [--max_backoff_s=S] [--kill_grace_s=S] [--log_file=PATH] -- <training command...>

Example:
    python monitor_process.py --max_restarts=5 -- torchrun --nproc_per_node=8 train.py configs/z2all_1b.py \\
        --out_dir=runs/1b

1. Start the command in its own process group (so torchrun and all its workers can be killed together).
2. Poll it. It has hung when its heartbeat (written by train.py to <out_dir>/heartbeat.json, see
   utils/heartbeat.py) is older than hang_timeout_s, counting from the attempt's start at the earliest;
   then the whole group gets SIGTERM, and SIGKILL after kill_grace_s.
3. Exit 0 → done. Non-zero exit or hang → wait backoff_s * 2^(k-1) (capped at max_backoff_s) and start
   restart k with the resume command, until max_restarts restarts have been used.
4. The resume command is the original with `--resume` appended once. For train.py, which takes its config
   from <out_dir>/exp_config.py on resume, a positional CONFIG.py after train.py is dropped. If the command
   names --out_dir and that dir holds no complete checkpoint yet, the original command is rerun instead
   (there is nothing to resume from).
5. SIGTERM/SIGINT to the monitor stop the child group and exit 128+signal.
Every event is logged with a timestamp to stderr (and --log_file if given).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from utils.heartbeat import read_heartbeat

USAGE = "python monitor_process.py [options] -- <training command...>"


@dataclass
class Options:
    max_restarts: int
    hang_timeout_s: float
    heartbeat: str | None
    backoff_s: float
    max_backoff_s: float
    kill_grace_s: float
    poll_s: float
    log_file: str | None


class Monitor:
    def __init__(self, cmd: list[str], opts: Options):
        self.cmd = cmd
        self.opts = opts
        self.out_dir = _flag_value(cmd, "--out_dir")
        if opts.heartbeat is None and self.out_dir is not None:
            opts.heartbeat = os.path.join(self.out_dir, "heartbeat.json")
        self.stop_signal: int | None = None

    def log(self, msg: str) -> None:
        line = f"[monitor {time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        print(line, file=sys.stderr, flush=True)
        if self.opts.log_file:
            with open(self.opts.log_file, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum

    def run(self) -> int:
        """The supervision loop (steps 1-5 of the module docstring). Returns the monitor's exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        hang = f"hang timeout {self.opts.hang_timeout_s:g}s on {self.opts.heartbeat}" \
            if self.opts.hang_timeout_s > 0 and self.opts.heartbeat else "no hang detection"
        self.log(f"supervising (max_restarts={self.opts.max_restarts}, {hang})")
        restarts = 0
        while True:
            cmd = self.cmd if restarts == 0 else self.resume_command()
            self.log(f"attempt {restarts + 1}: {shlex.join(cmd)}")
            code = self.run_once(cmd)
            if self.stop_signal is not None:
                self.log(f"stopped by signal {self.stop_signal}")
                return 128 + self.stop_signal
            if code == 0:
                self.log("training command finished with exit code 0")
                return 0
            if restarts >= self.opts.max_restarts:
                self.log(f"giving up: {restarts} restart(s) used, max_restarts={self.opts.max_restarts}")
                return code
            restarts += 1
            delay = min(self.opts.backoff_s * 2 ** (restarts - 1), self.opts.max_backoff_s)
            self.log(f"restart {restarts}/{self.opts.max_restarts} in {delay:g}s")
            if not self._sleep(delay):
                self.log(f"stopped by signal {self.stop_signal}")
                return 128 + self.stop_signal

    def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early (returning False) if the monitor is told to stop."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.stop_signal is not None:
                return False
            time.sleep(min(self.opts.poll_s, max(0.0, end - time.monotonic())))
        return self.stop_signal is None

    def run_once(self, cmd: list[str]) -> int:
        """Run one attempt to its end. Returns its exit code (128+signal if killed; 1 after a hang)."""
        start = time.time()
        try:
            proc = subprocess.Popen(cmd, start_new_session=True)
        except OSError as e:
            self.log(f"cannot start the command: {e}")
            return 127
        while True:
            try:
                rc = proc.wait(timeout=self.opts.poll_s)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stop_signal is not None:
                self.kill_group(proc, "the monitor is stopping")
                return 128 + self.stop_signal
            stale = self.heartbeat_age(start)
            if stale is not None:
                self.kill_group(proc, stale)
                return 1
        self._kill_leftovers(proc)
        code = rc if rc >= 0 else 128 - rc
        self.log(f"attempt exited with code {rc}" + (f" (signal {-rc})" if rc < 0 else "")
                 + f" after {time.time() - start:.1f}s")
        return code

    def heartbeat_age(self, start: float) -> str | None:
        """A description of the hang, or None while the heartbeat is fresh (or hang detection is off)."""
        if self.opts.hang_timeout_s <= 0 or not self.opts.heartbeat:
            return None
        beat = read_heartbeat(self.opts.heartbeat)
        last = max(start, float(beat["time"])) if beat else start
        age = time.time() - last
        if age <= self.opts.hang_timeout_s:
            return None
        at = f"last heartbeat at iter {beat.get('iter')}" if beat and beat["time"] >= start else "no heartbeat yet"
        return f"hang: nothing for {age:.1f}s > hang_timeout_s={self.opts.hang_timeout_s:g} ({at})"

    def kill_group(self, proc: subprocess.Popen, why: str) -> None:
        """SIGTERM the attempt's process group, then SIGKILL whatever is left after kill_grace_s."""
        self.log(f"stopping the attempt (pid {proc.pid}): {why}")
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.opts.kill_grace_s)
        except subprocess.TimeoutExpired:
            self.log(f"no exit {self.opts.kill_grace_s:g}s after SIGTERM; sending SIGKILL")
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()

    def _kill_leftovers(self, proc: subprocess.Popen) -> None:
        """The leader has exited; orphans of the attempt (stuck workers holding GPUs) must not outlive it."""
        _signal_group(proc.pid, signal.SIGKILL)

    def resume_command(self) -> list[str]:
        """The command for a restart (step 4 of the module docstring)."""
        if self.out_dir is not None and not _has_complete_checkpoint(self.out_dir):
            self.log(f"no complete checkpoint in {self.out_dir}/ckpt yet: rerunning the original command")
            return list(self.cmd)
        if "--resume" in self.cmd or any(a.startswith("--resume=") for a in self.cmd):
            return list(self.cmd)
        cmd = list(self.cmd)
        script = next((i for i, a in enumerate(cmd) if os.path.basename(a) == "train.py"), None)
        if script is not None:
            dropped = [a for a in cmd[script + 1:] if a.endswith(".py") and not a.startswith("-")]
            if dropped:
                self.log(f"resume: dropping {dropped} (train.py --resume reads <out_dir>/exp_config.py)")
            cmd = cmd[:script + 1] + [a for a in cmd[script + 1:] if a not in dropped]
            if self.out_dir is None:
                self.log("warning: the command has no --out_dir=RUN; train.py --resume needs it")
        return cmd + ["--resume"]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _flag_value(cmd: list[str], flag: str) -> str | None:
    """The value of `--flag=V` or `--flag V` in cmd (the last one wins, as in train.py), else None."""
    value = None
    for i, arg in enumerate(cmd):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(cmd):
            value = cmd[i + 1]
    return value


def _has_complete_checkpoint(out_dir: str) -> bool:
    root = Path(out_dir) / "ckpt"
    return root.is_dir() and any((p / "COMPLETE").is_file() for p in root.glob("step_*"))


def parse_args(argv: list[str]) -> tuple[Options, list[str]]:
    if "--" not in argv:
        raise ValueError(f"no training command: put it after '--', as in: {USAGE}")
    split = argv.index("--")
    cmd = argv[split + 1:]
    if not cmd:
        raise ValueError(f"the training command after '--' is empty; usage: {USAGE}")
    p = argparse.ArgumentParser(prog="monitor_process.py", usage=USAGE)
    p.add_argument("--max_restarts", type=int, default=10, help="restarts allowed before giving up")
    p.add_argument("--hang_timeout_s", type=float, default=1800.0,
                   help="seconds without a heartbeat before the run counts as hung (0: off)")
    p.add_argument("--heartbeat", default=None, help="heartbeat file (default <out_dir>/heartbeat.json)")
    p.add_argument("--backoff_s", type=float, default=10.0, help="wait before the first restart, doubled after")
    p.add_argument("--max_backoff_s", type=float, default=300.0, help="longest wait between restarts")
    p.add_argument("--kill_grace_s", type=float, default=30.0, help="SIGTERM to SIGKILL delay when stopping")
    p.add_argument("--poll_s", type=float, default=1.0, help="how often to check the command (seconds)")
    p.add_argument("--log_file", default=None, help="also append the monitor's log lines here")
    ns = p.parse_args(argv[:split])
    for name in ("max_restarts", "hang_timeout_s", "backoff_s", "max_backoff_s", "kill_grace_s"):
        if getattr(ns, name) < 0:
            raise ValueError(f"--{name} must be >= 0 (got {getattr(ns, name)})")
    if ns.poll_s <= 0:
        raise ValueError(f"--poll_s must be > 0 (got {ns.poll_s})")
    return Options(**vars(ns)), cmd


def main(argv: list[str] | None = None) -> int:
    try:
        opts, cmd = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(f"monitor_process.py: {e}", file=sys.stderr)
        return 2
    return Monitor(cmd, opts).run()


if __name__ == "__main__":
    sys.exit(main())
