"""Shared by the optimizer tests of every tier: a tiny model with mixed 1-D/2-D params, data, a training loop.

The global batch of every step is fixed (seeded by the step); rank r of W takes rows [r·B/W, (r+1)·B/W).
A single process reproduces W ranks with W micro-batches under no_sync() and grad scale 1/W, so its
backward passes are the ranks' backward passes and only the fp32 reduction order differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from optimizer import build_optimizer, get_lr
from optimizer.config import OptimizerConfig
from parallel.config import DDPConfig
from parallel.ddp import DistributedDataParallel
from parallel.dist import DistContext

BATCH = 6  # global rows per step: divisible by 1, 2 and 3 ranks
DIMS = (7, 13, 9, 5)


class Block(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) * 0.4)
        self.bias = nn.Parameter(torch.randn(d_out) * 0.1)
        self.gain = nn.Parameter(1.0 + 0.1 * torch.randn(d_out))

    def forward(self, x):
        return torch.tanh(x @ self.weight.t() + self.bias) * self.gain


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block(a, b) for a, b in zip(DIMS, DIMS[1:]))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def make_model(dtype: torch.dtype) -> Toy:
    torch.manual_seed(1234)
    return Toy().to(dtype)


def batch(step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_000 + step)
    return torch.randn(BATCH, DIMS[0], generator=g).to(dtype), torch.randn(BATCH, DIMS[-1], generator=g).to(dtype)


def loss_fn(model, x, y) -> torch.Tensor:
    return (model(x).float() - y.float()).square().mean()


@dataclass
class Case:
    dtype: torch.dtype = torch.bfloat16
    zero: bool = False
    bucket_size: int = 100
    grad_reduce_in_fp32: bool = True
    overlap_grad_reduce: bool = True
    inject_inf_at: int = -1  # step at which rank 1 (or the single process) writes an inf into its grads
    optim: dict = field(default_factory=dict)  # OptimizerConfig overrides

    def optimizer_config(self) -> OptimizerConfig:
        base = dict(learning_rate=2e-2, min_lr=2e-3, warmup_iters=3, lr_decay_iters=20, weight_decay=0.5,
                    grad_clip=0.0)
        base.update(self.optim)
        return OptimizerConfig(**base)


def single_ctx() -> DistContext:
    return DistContext(0, 1, 0, torch.device("cpu"), None, None)


def setup(ctx: DistContext, case: Case, use_zero: bool | None = None):
    """(model, ddp, optimizer, optimizer config) for `case` on `ctx`."""
    use_zero = case.zero if use_zero is None else use_zero
    model = make_model(case.dtype)
    dcfg = DDPConfig(bucket_size=case.bucket_size, grad_reduce_in_fp32=case.grad_reduce_in_fp32,
                     overlap_grad_reduce=case.overlap_grad_reduce,
                     comm_hook="reduce_scatter" if use_zero else "allreduce", use_distributed_optimizer=use_zero)
    ddp = DistributedDataParallel(model, dcfg, ctx)
    ocfg = case.optimizer_config()
    opt = build_optimizer(ocfg, ddp, case.dtype, ctx)
    ddp.register_post_reduce(opt.post_reduce_callback)
    return model, ddp, opt, ocfg


def train_steps(ctx, case: Case, model, ddp, opt, ocfg, start: int, stop: int, parts: int) -> list[dict]:
    """Steps [start, stop) on `parts` data shards: ranks (world == parts) or micro-batches (world 1)."""
    ga = parts // ctx.world_size
    if ga > 1:
        ddp.set_grad_scale(1.0 / parts)
    rows = BATCH // parts
    log = []
    for it in range(start, stop):
        opt.set_lr(get_lr(it, ocfg, 20))
        ddp.zero_grad_buffer()
        x, y = (t.to(ctx.device) for t in batch(it, case.dtype))
        for m in range(ga):
            part = ctx.rank * ga + m
            sl = slice(part * rows, (part + 1) * rows)
            if m < ga - 1:
                with ddp.no_sync():
                    opt.scale_loss(loss_fn(ddp, x[sl], y[sl])).backward()
            else:
                opt.scale_loss(loss_fn(ddp, x[sl], y[sl])).backward()
        ddp.finish_grad_sync()
        if it == case.inject_inf_at and ctx.rank == min(1, ctx.world_size - 1):
            _inject_inf(ctx, ddp, case.zero)
        stepped, norm = opt.step()
        log.append({"stepped": bool(stepped), "norm": float(norm), "scale": opt.loss_scale})
    ddp.finish_param_sync()
    return log


def _inject_inf(ctx, ddp, zero: bool) -> None:
    """Write an inf into a grad element this rank reduces (its shard with ZeRO-1)."""
    bucket = ddp.buffers[0].buckets[0]
    lo = bucket.shard_range(ctx.rank)[0] if zero else 0
    bucket.grad_data[lo] = float("inf")


def params_of(model) -> dict[str, np.ndarray]:
    return {n: p.detach().float().numpy().copy() for n, p in model.named_parameters()}


def to_numpy(sd):
    """A state dict with tensors as numpy arrays (safe to send between processes)."""
    if isinstance(sd, torch.Tensor):
        return sd.float().numpy().copy()
    if isinstance(sd, dict):
        return {k: to_numpy(v) for k, v in sd.items()}
    return sd


def to_torch(sd):
    if isinstance(sd, np.ndarray):
        return torch.from_numpy(sd.copy())
    if isinstance(sd, dict):
        return {k: to_torch(v) for k, v in sd.items()}
    return sd


def merge_main(sds: list) -> dict[str, dict[str, np.ndarray]]:
    """Reassemble full main/exp_avg/exp_avg_sq per param from every rank's state dict (checking coverage)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for sd in sds:
        if sd is None:
            continue
        for name, piece in sd["params"].items():
            n = int(np.prod(piece["shape"]))
            full = out.setdefault(name, {k: np.full(n, np.nan, np.float32) for k in ("main", "exp_avg", "exp_avg_sq")})
            for k in full:
                full[k][piece["start"]:piece["end"]] = np.asarray(piece[k])
    for name, full in out.items():
        for k, v in full.items():
            assert not np.isnan(v).any(), f"{name}.{k}: elements not held by any rank"
    return out


def run_case(ctx, case: Case, parts: int, steps: int = 20) -> dict:
    """Train `steps` steps; return params, merged-able optimizer state and the per-step log."""
    model, ddp, opt, ocfg = setup(ctx, case)
    log = train_steps(ctx, case, model, ddp, opt, ocfg, 0, steps, parts)
    return {"params": params_of(model), "state": to_numpy(opt.state_dict()), "log": log}


def with_optim(case: Case, **kw) -> Case:
    return replace(case, optim={**case.optim, **kw})


def load_params(model, params: dict[str, np.ndarray]) -> None:
    """Copy saved (fp32 numpy) params into the model, cast to its dtype (what a checkpoint load does)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.from_numpy(params[n]).to(p.dtype).view(p.shape))
