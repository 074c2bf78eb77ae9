"""LR schedule shape and the loss scalers' grow/backoff/hysteresis logic."""
import math

import pytest

from optimizer.config import OptimizerConfig
from optimizer.grad_scaler import ConstantGradScaler, DynamicGradScaler
from optimizer.lr_schedule import get_lr


def test_lr_warmup_cosine_floor():
    cfg = OptimizerConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=0)
    assert get_lr(0, cfg, 110) == pytest.approx(0.1)
    assert get_lr(9, cfg, 110) == pytest.approx(1.0)
    assert get_lr(10, cfg, 110) == pytest.approx(1.0)
    assert get_lr(60, cfg, 110) == pytest.approx(0.55)
    assert get_lr(110, cfg, 110) == pytest.approx(0.1)
    assert get_lr(500, cfg, 110) == pytest.approx(0.1)
    lrs = [get_lr(i, cfg, 110) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_lr_explicit_decay_iters_and_constant():
    cfg = OptimizerConfig(learning_rate=2.0, min_lr=0.0, warmup_iters=0, lr_decay_iters=4)
    assert get_lr(0, cfg, 1000) == pytest.approx(2.0)
    assert get_lr(2, cfg, 1000) == pytest.approx(1.0 + math.cos(math.pi / 2))
    assert get_lr(4, cfg, 1000) == 0.0
    cfg = OptimizerConfig(learning_rate=2.0, min_lr=0.0, warmup_iters=2, decay_lr=False)
    assert [get_lr(i, cfg, 10) for i in range(4)] == [1.0, 2.0, 2.0, 2.0]
    with pytest.raises(ValueError):
        get_lr(-1, cfg, 10)


def test_dynamic_scaler_grow_backoff_hysteresis():
    s = DynamicGradScaler(initial_scale=8.0, min_scale=1.0, growth_interval=3, hysteresis=2)
    s.update(False), s.update(False)
    assert s.scale == 8.0
    s.update(False)
    assert s.scale == 16.0
    s.update(True)  # first overflow spends hysteresis only
    assert s.scale == 16.0
    s.update(True)
    assert s.scale == 8.0
    s.update(True)  # hysteresis stays spent until the next growth
    assert s.scale == 4.0
    for _ in range(5):
        s.update(True)
    assert s.scale == 1.0  # floor
    sd = s.state_dict()
    t = DynamicGradScaler(initial_scale=8.0, min_scale=1.0, growth_interval=3, hysteresis=2)
    t.load_state_dict(sd)
    assert t.state_dict() == sd
    with pytest.raises(ValueError, match="min_loss_scale"):
        DynamicGradScaler(initial_scale=0.5, min_scale=1.0, growth_interval=3, hysteresis=2)


def test_constant_scaler():
    s = ConstantGradScaler(128.0)
    s.update(True)
    assert s.scale == 128.0 and s.inv_scale == 1 / 128
    with pytest.raises(ValueError, match="loss_scale"):
        ConstantGradScaler(0.0)
