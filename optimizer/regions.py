"""Regions: the part of one bucket that this rank updates, one class per AdamW implementation.

A region holds its slice of the bucket's params and grads, one ParamSlice per param it touches, its fp32 main
values and its Adam state (see optimizer/mixed_precision.py for the layout and the step):
- TorchRegion: a torch.optim AdamW (torch_fused, foreach) or apex FusedAdam over one fp32 view per slice;
- TritonRegion: the fused kernel of optimizer/fused_adamw.py over the whole region, m/v flat;
- SplitTritonRegion: the kernel on split main values (the bf16 params are the high half, an int16 tensor the low).
The fp32 main values are the model's own param buffer for fp32 params, else an fp32 copy (split: no copy).
"""
from __future__ import annotations

import abc
import functools
from dataclasses import dataclass

import torch

from optimizer.config import OptimizerConfig
from optimizer.fused_adamw import build_decay_plan, fused_adamw_step, join_main, split_main
from optimizer.range_map import ParamSlice, shard_param_slices
from parallel.comm_hooks.bucket import GradBucket


def make_adamw(params_groups: list[dict], cfg: OptimizerConfig, impl: str) -> torch.optim.Optimizer:
    """A torch.optim AdamW (torch_fused or foreach) or apex FusedAdam over the groups."""
    kw = dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    if impl == "apex":
        try:
            from apex.optimizers import FusedAdam
        except ImportError as exc:
            raise ValueError("--optimizer_impl=apex but apex is not installed; use --optimizer_impl=auto") from exc
        return FusedAdam(params_groups, adam_w_mode=True, **kw)
    return torch.optim.AdamW(params_groups, fused=impl == "torch_fused", foreach=impl == "foreach", **kw)


def _decayed(s: ParamSlice) -> bool:
    """Weight decay applies to matrices (and higher), never to 1-D params (norm gains, biases)."""
    return len(s.param.shape) >= 2


@dataclass
class StepScales:
    """The grad multipliers of one step (None: not applied); `one` is the device's 1.0 for the kernel."""

    inv_scale: torch.Tensor | None
    clip_coef: torch.Tensor | None
    one: torch.Tensor

    @functools.cached_property
    def product(self) -> torch.Tensor:
        """inv_scale * clip_coef as the kernel's one multiplier, computed once per step for every region."""
        if self.inv_scale is not None and self.clip_coef is not None:
            return self.inv_scale * self.clip_coef
        if self.inv_scale is not None:
            return self.inv_scale
        return self.clip_coef if self.clip_coef is not None else self.one


class Region(abc.ABC):
    """What every implementation shares: the slices, the region's views of the bucket, fp32 main values."""

    split = False  # the main values are split into the bf16 params and a low half (SplitTritonRegion)
    unscales_in_place = False  # fp16: the step may unscale the fp32 grads in place (TorchRegion over fp32 grads)

    def __init__(self, bucket: GradBucket, start: int, end: int, cfg: OptimizerConfig):
        self.index, self.start, self.end = bucket.index, start, end
        self.cfg, self.lr = cfg, cfg.learning_rate
        # slices of BucketParams: s.param.name and s.param.shape name and shape the model's param
        self.slices: list[ParamSlice] = shard_param_slices({p: (p.start, p.end) for p in bucket.params}, start, end)
        self.names = [s.param.name for s in self.slices]
        self.param_region = bucket.param_data[start:end]
        self.grad_region = bucket.grad_data[start:end]
        self.alias_params = bucket.param_data.dtype == torch.float32
        self.alias_grads = bucket.grad_data.dtype == torch.float32
        self._grad_views = [self.grad_region[s.shard_start:s.shard_end] for s in self.slices]
        self._init_main()

    def _init_main(self) -> None:
        """fp32 main values: the param buffer itself (fp32 params) or a copy; one Parameter view per slice."""
        with torch.no_grad():
            self.main = self.param_region if self.alias_params else self.param_region.detach().float()
        self.main_params = [torch.nn.Parameter(self.main[s.shard_start:s.shard_end], requires_grad=False)
                            for s in self.slices]

    def main_values(self, i: int) -> torch.Tensor:
        """Slice i's fp32 main values (a view; split: joined into a new tensor)."""
        return self.main_params[i].detach()

    def load_main(self, i: int, dst: slice, values: torch.Tensor) -> None:
        """Set elements ``dst`` (relative to slice i) of the fp32 main values, and the model's params with them."""
        s = self.slices[i]
        a, b = s.shard_start + dst.start, s.shard_start + dst.stop  # offsets in the region
        with torch.no_grad():
            self.main_params[i][dst].copy_(values)
            if not self.alias_params:
                self.param_region[a:b].copy_(self.main_params[i][dst])

    def reload_model_params(self) -> None:
        """Main values := the model's current params (their low halves zero when split)."""
        if not self.alias_params:
            with torch.no_grad():
                self.main.copy_(self.param_region)

    def grad_views(self) -> list[torch.Tensor]:
        """Per-slice views of the reduced grads in the grad buffer (fp32, or bf16/fp16 main grads)."""
        return self._grad_views

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    @abc.abstractmethod
    def step(self, scales: StepScales) -> None:
        """AdamW on this region, the model's params updated too."""

    @abc.abstractmethod
    def adam_state(self, i: int) -> dict:
        """(exp_avg, exp_avg_sq) of slice i, created as zeros when it never stepped."""

    @abc.abstractmethod
    def get_step(self, i: int) -> float:
        """Slice i's AdamW step count."""

    @abc.abstractmethod
    def set_step(self, i: int, step: float) -> None:
        """Restore slice i's AdamW step count."""


class TorchRegion(Region):
    """A torch.optim AdamW (or apex FusedAdam) over the per-slice fp32 views; decayed slices in their own group."""

    def __init__(self, bucket: GradBucket, start: int, end: int, cfg: OptimizerConfig, impl: str):
        super().__init__(bucket, start, end, cfg)
        self.unscales_in_place = self.alias_grads
        decay, no_decay = [], []
        for s, p, g in zip(self.slices, self.main_params, self._grad_views):
            if self.alias_grads:
                p.grad = g  # the fp32 main_grad itself; low-precision grads get a per-step temporary copy
            (decay if _decayed(s) else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        self.opt = make_adamw(groups, cfg, impl) if groups else None

    def step(self, scales: StepScales) -> None:
        """fp32 grads (the buffer itself, or a temporary copy of bf16/fp16 grads freed right after, so the extra
        memory is one region), times inv_scale, times clip_coef, the optimizer's step, then the cast copy into the
        model's param buffer."""
        if not self.slices:
            return
        temp = None if self.alias_grads else self.grad_region.float()
        if temp is not None:
            for s, p in zip(self.slices, self.main_params):
                p.grad = temp[s.shard_start:s.shard_end]
        grads = [p.grad for p in self.main_params]
        if scales.inv_scale is not None:
            torch._foreach_mul_(grads, scales.inv_scale)
        if scales.clip_coef is not None:
            torch._foreach_mul_(grads, scales.clip_coef)
        self.opt.step()
        if temp is not None:
            for p in self.main_params:
                p.grad = None
        if not self.alias_params:
            self.param_region.copy_(self.main)

    def set_lr(self, lr: float) -> None:
        super().set_lr(lr)
        if self.opt is not None:
            for g in self.opt.param_groups:
                g["lr"] = lr

    def adam_state(self, i: int) -> dict:
        assert self.opt is not None
        p = self.main_params[i]
        st = self.opt.state[p]
        if "exp_avg" not in st:
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
            if _is_apex(self.opt):
                self.opt.param_groups[0].setdefault("step", 0)
            else:
                on_device = self.opt.defaults.get("fused") or self.opt.defaults.get("capturable")
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device if on_device else "cpu")
        return st

    def get_step(self, i: int) -> float:
        if _is_apex(self.opt):
            return float(_group_of(self.opt, self.main_params[i]).get("step", 0))
        return float(self.adam_state(i)["step"])

    def set_step(self, i: int, step: float) -> None:
        if _is_apex(self.opt):
            _group_of(self.opt, self.main_params[i])["step"] = int(step)
        else:
            self.adam_state(i)["step"].fill_(step)


def _is_apex(opt) -> bool:
    return type(opt).__module__.startswith("apex")


def _group_of(opt, p) -> dict:
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


class TritonRegion(Region):
    """The fused kernel over the whole region: flat m/v, one step count, a weight-decay plan for mixed slices."""

    def __init__(self, bucket: GradBucket, start: int, end: int, cfg: OptimizerConfig):
        super().__init__(bucket, start, end, cfg)
        numel, device = end - start, self.param_region.device
        self.exp_avg = torch.zeros(numel, dtype=torch.float32, device=device)
        self.exp_avg_sq = torch.zeros(numel, dtype=torch.float32, device=device)
        self.step_count = 0
        self._state = [{"exp_avg": self.exp_avg[s.shard_start:s.shard_end],
                        "exp_avg_sq": self.exp_avg_sq[s.shard_start:s.shard_end]} for s in self.slices]
        decayed = [(s.shard_start, s.shard_end) for s in self.slices if _decayed(s)]
        self.weight_decay = cfg.weight_decay if decayed else 0.0
        if decayed and len(decayed) < len(self.slices):
            self.decay_plan = build_decay_plan(numel, decayed, device)
        else:  # uniform: every element decayed (padding is zero and stays zero) or none
            self.decay_plan = None

    def _kernel_storage(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(main, param_out, main_lo) of the kernel: the fp32 main values and the model's params to cast into."""
        return self.main, None if self.alias_params else self.param_region, None

    def step(self, scales: StepScales) -> None:
        """One kernel reads the grads (any dtype) scaled by scales.product and writes main, m, v and the model's
        params."""
        if not self.slices:
            return
        self.step_count += 1
        cfg = self.cfg
        main, out, main_lo = self._kernel_storage()
        fused_adamw_step(main, self.grad_region, self.exp_avg, self.exp_avg_sq, out, lr=self.lr,
                         weight_decay=self.weight_decay, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.adam_eps,
                         step=self.step_count, grad_scale=scales.product, decay=self.decay_plan, impl="triton",
                         main_lo=main_lo)

    def adam_state(self, i: int) -> dict:
        return self._state[i]

    def get_step(self, i: int) -> float:
        return float(self.step_count)

    def set_step(self, i: int, step: float) -> None:
        """Restore the step count (one per region: every slice of a region steps together)."""
        self.step_count = int(step)


class SplitTritonRegion(TritonRegion):
    """The kernel on split main values: the bf16 params are the high half, ``lo`` (int16) the low half."""

    split = True

    def _init_main(self) -> None:
        assert self.param_region.dtype == torch.bfloat16, self.param_region.dtype
        self.main = None  # no fp32 tensor: the values are the bf16 params and self.lo, joined when read
        self.lo = torch.zeros(self.end - self.start, dtype=torch.int16, device=self.param_region.device)
        self.main_params = []

    def main_values(self, i: int) -> torch.Tensor:
        s = self.slices[i]
        return join_main(self.param_region[s.shard_start:s.shard_end], self.lo[s.shard_start:s.shard_end])

    def load_main(self, i: int, dst: slice, values: torch.Tensor) -> None:
        s = self.slices[i]
        a, b = s.shard_start + dst.start, s.shard_start + dst.stop  # offsets in the region
        with torch.no_grad():
            high, low = split_main(values.to(self.lo.device))
            self.param_region[a:b].copy_(high)
            self.lo[a:b].copy_(low)

    def reload_model_params(self) -> None:
        with torch.no_grad():
            self.lo.zero_()

    def _kernel_storage(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        return self.param_region, None, self.lo


def make_region(bucket: GradBucket, start: int, end: int, cfg: OptimizerConfig, impl: str, split: bool) -> Region:
    """The region of bucket elements [start, end) for the resolved --optimizer_impl and --main_params."""
    if split:
        assert impl == "triton", impl
        return SplitTritonRegion(bucket, start, end, cfg)
    if impl == "triton":
        return TritonRegion(bucket, start, end, cfg)
    return TorchRegion(bucket, start, end, cfg, impl)
