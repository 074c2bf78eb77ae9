"""Learning-rate schedule: linear warmup, cosine decay, then a floor."""
from __future__ import annotations

import math

from optimizer.config import OptimizerConfig


def get_lr(it: int, cfg: OptimizerConfig, max_iters: int) -> float:
    """The learning rate for optimizer step ``it`` (0-based).

    1. Warmup (``it < warmup_iters``): linear from learning_rate/warmup_iters at it=0 up to
       learning_rate, so the very first step already moves (never lr=0).
    2. ``decay_lr`` False: learning_rate from then on.
    3. Decay: over ``decay_iters = lr_decay_iters or max_iters`` steps, cosine from learning_rate
       (at it=warmup_iters) down to min_lr (at it=decay_iters).
    4. After decay_iters: min_lr.
    """
    if it < 0:
        raise ValueError(f"iteration must be >= 0, got {it}")
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or max_iters
    if it >= decay_iters:
        return cfg.min_lr
    span = decay_iters - cfg.warmup_iters
    ratio = (it - cfg.warmup_iters) / span
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)
