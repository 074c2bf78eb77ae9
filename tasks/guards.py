"""The trainer's fault policy: stop reasons with their exit codes, non-finite steps, loss spikes, finite weights.

- RunStop: the run stops on purpose with an exit code of utils/exit_codes.py (train.py records it in
  <out_dir>/exit_status.json for monitor_process.py).
- NonFiniteGuard: the optimizer skips a step whose grad norm is inf/NaN on every rank together; the guard counts
  them and stops the run (NAN) after max_skipped_steps in a row. A loss-scaler overflow that the fp16 scaler can
  still recover from by lowering the scale is counted in the totals but not as a strike.
- SpikeDetector (--spike_rollback): a step loss above spike_factor x the median of the last MEDIAN_WINDOW step
  losses for spike_patience steps in a row stops the run (SPIKE) with the window's iterations and data range,
  which the monitor skips on its rollback. Spiking losses stay out of the median.
- weights_finite: a checkpoint is never written from non-finite weights.
"""
from __future__ import annotations

import statistics
from collections import deque

import torch
import torch.distributed as dist

from utils.exit_codes import NAN, SPIKE
from utils.run_status import SpikeWindow

MEDIAN_WINDOW = 100  # step losses the spike median looks back over
MIN_HISTORY = 20  # no spike is called before this many step losses


class RunStop(Exception):
    """Stop the run with `code` (utils/exit_codes.py); `spike` only with SPIKE."""

    def __init__(self, code: int, reason: str, spike: SpikeWindow | None = None):
        super().__init__(reason)
        self.code, self.reason, self.spike = code, reason, spike


class NonFiniteGuard:
    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.total = 0

    def update(self, stepped: bool, recoverable: bool, iteration: int) -> str | None:
        """Count one step; a one-line note when it was skipped. Raises RunStop(NAN) at max_in_a_row strikes."""
        if stepped:
            self.in_a_row = 0
            return None
        self.total += 1
        if recoverable:
            return f"iter {iteration}: fp16 overflow, step skipped and the loss scale lowered"
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            raise RunStop(NAN, f"the loss or grad norm was non-finite for {self.in_a_row} steps in a row (iter "
                               f"{iteration}); the run stops with its last finite checkpoint kept: lower "
                               f"--learning_rate or turn on --grad_clip, then --resume")
        return (f"iter {iteration}: non-finite grad norm, step skipped on every rank ({self.in_a_row} in a row, "
                f"the run stops at --max_skipped_steps={self.max_in_a_row})")


class SpikeDetector:
    def __init__(self, factor: float, patience: int):
        self.factor, self.patience = factor, patience
        self.history: deque[float] = deque(maxlen=MEDIAN_WINDOW)
        self.streak: list[int] = []  # iterations of the current run of spiking losses

    def update(self, iteration: int, loss: float, consumed_end: int, micro_batches_per_step: int) -> None:
        """One step's loss; raises RunStop(SPIKE) with the window once the spike lasted `patience` steps."""
        spiking = (len(self.history) >= MIN_HISTORY and
                   not loss <= self.factor * statistics.median(self.history))  # a NaN loss spikes too
        if not spiking:
            self.streak = []
            self.history.append(loss)
            return
        self.streak.append(iteration)
        if len(self.streak) < self.patience:
            return
        start = self.streak[0]
        window = SpikeWindow(start_iter=start, end_iter=iteration, consumed_end=consumed_end,
                             consumed_start=consumed_end - (iteration - start + 1) * micro_batches_per_step)
        raise RunStop(SPIKE, f"loss spike: {loss:.4g} > {self.factor} x the median "
                             f"{statistics.median(self.history):.4g} for iterations {start}-{iteration}", window)

    def state_dict(self) -> dict:
        return {"history": list(self.history), "streak": list(self.streak)}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque((float(v) for v in state.get("history", [])), maxlen=MEDIAN_WINDOW)
        self.streak = [int(v) for v in state.get("streak", [])]


def weights_finite(ddp, ctx) -> bool:
    """True when every parameter is finite on every rank (one reduction per buffer and one all-reduce)."""
    bad = torch.zeros(1, device=ctx.device, dtype=torch.float32)
    for buf in ddp.buffers:
        bad += (~torch.isfinite(buf.param_data)).any().float()
    if ctx.world_size > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=ctx.group)
    return not bool(bad.item())
