"""Loss scalers for fp16 training: a fixed scale and a dynamic (grow/backoff with hysteresis) scale.

The scale lives on the host as a Python float: fp16 steps make one host sync per iteration anyway
(the skip decision, see optimizer/mixed_precision.py), and a float keeps ``loss_scale`` free.
"""
from __future__ import annotations


class ConstantGradScaler:
    """A fixed loss scale (``--loss_scale=S`` with S > 0). Overflowing steps are still skipped."""

    def __init__(self, scale: float):
        if scale <= 0:
            raise ValueError(f"a fixed loss scale must be > 0, got {scale}; use --loss_scale=0 for dynamic scaling")
        self.scale = float(scale)

    @property
    def inv_scale(self) -> float:
        return 1.0 / self.scale

    def update(self, found_inf: bool) -> None:
        """A fixed scale never changes."""

    def state_dict(self) -> dict:
        return {"kind": "constant", "scale": self.scale}

    def load_state_dict(self, sd: dict) -> None:
        self.scale = float(sd["scale"])


class DynamicGradScaler:
    """Dynamic loss scale (``--loss_scale=0``).

    update(found_inf) after every step:
    1. Overflow: reset the clean-step counter and spend one unit of hysteresis; when the hysteresis
       is used up, multiply the scale by ``backoff_factor`` (never below ``min_scale``).
    2. Clean step: count it; after ``growth_interval`` clean steps in a row, multiply the scale by
       ``growth_factor`` and refill the hysteresis.
    Hysteresis is refilled only by growth, so isolated overflows between growths add up.
    """

    def __init__(
        self,
        initial_scale: float,
        min_scale: float,
        growth_interval: int,
        hysteresis: int,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
    ):
        if initial_scale <= 0 or min_scale <= 0 or initial_scale < min_scale:
            raise ValueError(
                f"need 0 < --min_loss_scale <= --initial_loss_scale, got min_loss_scale={min_scale}, "
                f"initial_loss_scale={initial_scale}"
            )
        if growth_interval < 1 or hysteresis < 1:
            raise ValueError(
                f"--loss_scale_window and --hysteresis must be >= 1, got {growth_interval} and {hysteresis}"
            )
        if not (growth_factor > 1.0 and 0.0 < backoff_factor < 1.0):
            raise ValueError(f"need growth_factor > 1 and 0 < backoff_factor < 1, got {growth_factor}, {backoff_factor}")
        self.scale = float(initial_scale)
        self.min_scale = float(min_scale)
        self.growth_interval = growth_interval
        self.hysteresis = hysteresis
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_tracker = 0
        self.hysteresis_tracker = hysteresis

    @property
    def inv_scale(self) -> float:
        return 1.0 / self.scale

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self.growth_tracker = 0
            self.hysteresis_tracker -= 1
            if self.hysteresis_tracker <= 0:
                self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.growth_tracker = 0
            self.hysteresis_tracker = self.hysteresis
            self.scale *= self.growth_factor

    def state_dict(self) -> dict:
        return {
            "kind": "dynamic",
            "scale": self.scale,
            "growth_tracker": self.growth_tracker,
            "hysteresis_tracker": self.hysteresis_tracker,
        }

    def load_state_dict(self, sd: dict) -> None:
        self.scale = float(sd["scale"])
        self.growth_tracker = int(sd.get("growth_tracker", 0))
        self.hysteresis_tracker = int(sd.get("hysteresis_tracker", self.hysteresis))
