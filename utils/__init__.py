"""Shared utilities: checkpoints, metrics logging, plots, MFU, heartbeat, atomic file writes.

Import the submodules directly (`from utils.checkpoint import CheckpointManager`); this package imports
nothing at import time so that light users (monitor_process.py) do not pay for torch.
"""
