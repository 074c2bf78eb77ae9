"""Mixed-precision AdamW over the DDP's flat buffers: fp32 main params, loss scaling, global clipping.

Layout. The optimizer works on *regions*: for every bucket of every ParamAndGradBuffer, the part this
rank updates. Without ZeRO-1 a region is the whole bucket; with ZeRO-1 (optimizer/distributed.py) it
is the rank's shard. Each region holds
- ``main``: an fp32 flat tensor of the region's elements: a copy of the model's params (bf16/fp16
  params), or the model's param buffer itself (fp32 params: nothing to copy);
- ``grad``: the fp32 grads: the DDP's ``main_grad`` buffer itself (fp32 grads), or an fp32 copy;
- one fp32 *view* of ``main`` (and of ``grad``) per param slice in the region, so torch's AdamW
  keeps Adam m/v per slice, and weight decay is chosen per slice: params with ndim >= 2 go into the
  decayed group, 1-D params into the other, even where they share a bucket;
- its own torch AdamW, so one bucket can step on its own (``--overlap_optim_step``).

Host syncs. bf16/fp32 steps make none: the clip coefficient is applied as a tensor (multiplying by
exactly 1.0 when under the limit). fp16 makes exactly one per step: the all-reduced found_inf flag
is read on the host to skip the step and update the loss scale. (A sync-free skip would need every
AdamW update masked by the flag, including m/v and the step count, which torch's fused kernels do
not support; one sync per fp16 step is cheap next to a forward/backward.)
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from optimizer.clip import clip_grads_, global_norm, squared_norm
from optimizer.config import OptimizerConfig
from optimizer.grad_scaler import ConstantGradScaler, DynamicGradScaler
from optimizer.range_map import ParamSlice, shard_param_slices

STATE_FORMAT = "z2all.optimizer.v1"


def make_adamw(params_groups: list[dict], cfg: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW per --optimizer_impl: torch fused (auto on CUDA), foreach (auto elsewhere), or apex FusedAdam."""
    impl = cfg.optimizer_impl
    if impl == "auto":
        impl = "torch_fused" if device.type == "cuda" else "foreach"
    kw = dict(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    if impl == "apex":
        try:
            from apex.optimizers import FusedAdam
        except ImportError as exc:
            raise ValueError("--optimizer_impl=apex but apex is not installed; use --optimizer_impl=auto") from exc
        return FusedAdam(params_groups, adam_w_mode=True, **kw)
    return torch.optim.AdamW(params_groups, fused=impl == "torch_fused", foreach=impl == "foreach", **kw)


class _Region:
    """One bucket's part that this rank updates (see the module docstring)."""

    def __init__(self, buffer, bucket, start: int, end: int, names: dict, cfg: OptimizerConfig):
        self.buffer, self.bucket, self.start, self.end = buffer, bucket, start, end
        self.slices: list[ParamSlice] = shard_param_slices(buffer.param_index_map, start, end, bucket.index)
        self.names = [names[s.param] for s in self.slices]
        param_region = buffer.param_data[start:end]
        grad_region = buffer.grad_data[start:end]
        self.alias_params = buffer.param_dtype == torch.float32
        self.alias_grads = buffer.grad_dtype == torch.float32
        with torch.no_grad():
            self.main = param_region if self.alias_params else param_region.detach().float()
        self.grad = grad_region if self.alias_grads else torch.zeros_like(self.main)
        self.main_params: list[torch.nn.Parameter] = []
        decay, no_decay = [], []
        for s in self.slices:
            p = torch.nn.Parameter(self.main[s.shard_start:s.shard_end], requires_grad=False)
            p.grad = self.grad[s.shard_start:s.shard_end]
            self.main_params.append(p)
            (decay if s.param.ndim >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        self.opt = make_adamw(groups, cfg, self.main.device) if groups else None

    def copy_grads_in(self) -> None:
        """Bring the reduced grads into the fp32 ``grad`` (a no-op when it aliases an fp32 main_grad)."""
        if not self.alias_grads:
            self.grad.copy_(self.buffer.grad_data[self.start:self.end])

    def grad_views(self) -> list[torch.Tensor]:
        return [p.grad for p in self.main_params]

    def step(self) -> None:
        """AdamW on this region, then the result into the model's param buffer (cast to its dtype)."""
        if self.opt is not None:
            self.opt.step()
        if not self.alias_params:
            self.buffer.param_data[self.start:self.end].copy_(self.main)

    def set_lr(self, lr: float) -> None:
        if self.opt is not None:
            for g in self.opt.param_groups:
                g["lr"] = lr

    def adam_state(self, p: torch.nn.Parameter) -> dict:
        """(exp_avg, exp_avg_sq, step) of a main param, created as zeros when it never stepped."""
        assert self.opt is not None
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

    def get_step(self, p) -> float:
        if _is_apex(self.opt):
            return float(_group_of(self.opt, p).get("step", 0))
        return float(self.adam_state(p)["step"])

    def set_step(self, p, step: float) -> None:
        if _is_apex(self.opt):
            _group_of(self.opt, p)["step"] = int(step)
        else:
            self.adam_state(p)["step"].fill_(step)


def _is_apex(opt) -> bool:
    return type(opt).__module__.startswith("apex")


def _group_of(opt, p) -> dict:
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


class MixedPrecisionOptimizer:
    """AdamW on fp32 regions of the DDP's buffers (see the module docstring).

    Subclasses choose the regions (``_region_range``), whether grads are sharded (global norm and
    state ownership) and what happens after the update (``_after_update``: ZeRO-1 all-gathers).
    """

    sharded = False

    def __init__(self, cfg: OptimizerConfig, ddp, ctx, param_dtype: torch.dtype):
        self.cfg, self.ddp, self.ctx, self.param_dtype = cfg, ddp, ctx, param_dtype
        self.device = ctx.device
        self.group, self.world_size, self.rank = ctx.group, ctx.world_size, ctx.rank
        names = {p: n for n, p in ddp.module.named_parameters()}
        self.regions: list[_Region] = []
        for buffer in ddp.buffers:
            for bucket in buffer.buckets:
                lo, hi = self._region_range(bucket)
                self.regions.append(_Region(buffer, bucket, lo, hi, names, cfg))
        self._region_of_bucket = {id(r.bucket): r for r in self.regions}
        self.grad_scaler = self._make_scaler()
        self.iteration = 0  # optimizer.step() calls, skipped ones included
        self._overlap_sq_norms: list[torch.Tensor] = []
        self._overlap_stepped: set[int] = set()
        self.overlap_optim_step = cfg.overlap_optim_step
        if self.overlap_optim_step:
            self._install_overlap_hook()

    # ----- subclass points -----
    def _region_range(self, bucket) -> tuple[int, int]:
        return bucket.offset, bucket.offset + bucket.numel

    def _after_update(self) -> None:
        """Nothing: the model params (views of the buffer) already hold the update."""

    def _make_scaler(self):
        """fp16 params need a loss scale (fixed with --loss_scale > 0, else dynamic); others none."""
        if self.param_dtype != torch.float16:
            return None
        cfg = self.cfg
        if cfg.loss_scale > 0:
            return ConstantGradScaler(cfg.loss_scale)
        return DynamicGradScaler(cfg.initial_loss_scale, cfg.min_loss_scale, cfg.loss_scale_window, cfg.hysteresis)

    # ----- public API -----
    @property
    def loss_scale(self) -> float:
        return self.grad_scaler.scale if self.grad_scaler is not None else 1.0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.grad_scaler.scale if self.grad_scaler is not None else loss

    def reload_model_params(self) -> None:
        """Re-copy the fp32 main params from the model's params.

        The main params are copied once at construction; call this after changing the model's weights
        outside the optimizer (e.g. loading pretrained weights without optimizer state). Not needed
        after ``load_state_dict``, which restores the main params themselves.
        """
        with torch.no_grad():
            for r in self.regions:
                if not r.alias_params:
                    r.main.copy_(r.buffer.param_data[r.start:r.end])

    def set_lr(self, lr: float) -> None:
        """Set the LR of every group. With --overlap_optim_step call it before the backward."""
        for r in self.regions:
            r.set_lr(lr)

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step after ``ddp.finish_grad_sync()``; returns (stepped, grad_norm) tensors.

        1. Bring the reduced grads into the fp32 regions.
        2. fp16: unscale and look for inf/NaN; all-reduce the flag (MAX) and read it once on the host;
           on overflow lower the scale and return without touching params or Adam state.
        3. Global grad norm (sharded: summed over ranks); clip by it when --grad_clip > 0.
        4. AdamW on every region; copy into the model's params; subclass hook (ZeRO-1: all-gather).
        """
        self.iteration += 1
        if self.overlap_optim_step:
            return self._finish_overlapped_step()
        for r in self.regions:
            r.copy_grads_in()
        grads = [g for r in self.regions for g in r.grad_views()]
        if self.grad_scaler is not None and self._unscale_and_check(grads):
            self.grad_scaler.update(True)
            return torch.zeros((), dtype=torch.bool, device=self.device), torch.full((), math.inf, device=self.device)
        norm = global_norm(grads, self.device, self.sharded, self.group, self.world_size)
        clip_grads_(grads, norm, self.cfg.grad_clip)
        for r in self.regions:
            r.step()
        if self.grad_scaler is not None:
            self.grad_scaler.update(False)
        self._after_update()
        return torch.ones((), dtype=torch.bool, device=self.device), norm

    def _unscale_and_check(self, grads: list[torch.Tensor]) -> bool:
        """Unscale grads in place; True when any rank saw inf/NaN (the one host sync of an fp16 step)."""
        found_inf = torch.zeros(1, dtype=torch.float32, device=self.device)
        if grads:
            inv = torch.full((1,), self.grad_scaler.inv_scale, dtype=torch.float32, device=self.device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv)
        if self.world_size > 1:
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX, group=self.group)
        return bool(found_inf.item())

    # ----- overlap_optim_step -----
    def _install_overlap_hook(self) -> None:
        from parallel.comm_hooks.overlap_optim_step import OverlapOptimStepState, overlap_optim_step_hook

        # the DDP's current (state, hook): the contract names comm_hook_state; the hook is private there
        inner_hook = getattr(self.ddp, "comm_hook", None) or getattr(self.ddp, "_comm_hook", None)
        inner_state = getattr(self.ddp, "comm_hook_state", None)
        if inner_hook is None:
            raise TypeError("--overlap_optim_step needs the DDP's current comm hook (ddp.comm_hook or ddp._comm_hook)")
        state = OverlapOptimStepState(inner_hook, inner_state, self.step_bucket)
        self.ddp.register_comm_hook(state, overlap_optim_step_hook)

    def step_bucket(self, bucket) -> None:
        """Comm-hook callback: the bucket's reduction finished; step its region now.

        Exact only without a global dependency (no clipping, no loss scaling); build_optimizer
        rejects the other combinations. The region's squared grad norm is kept for logging.
        """
        r = self._region_of_bucket[id(bucket)]
        r.copy_grads_in()
        self._overlap_sq_norms.append(squared_norm(r.grad_views(), self.device))
        r.step()
        self._overlap_stepped.add(id(bucket))

    def _finish_overlapped_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [r.bucket.index for r in self.regions if id(r.bucket) not in self._overlap_stepped]
        if missing:
            raise RuntimeError(
                f"--overlap_optim_step: buckets {missing} were not reduced this iteration; call "
                f"ddp.finish_grad_sync() after the last backward and before optimizer.step()"
            )
        sq = torch.stack(self._overlap_sq_norms).sum() if self._overlap_sq_norms else torch.zeros((), device=self.device)
        if self.sharded and self.world_size > 1:
            dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=self.group)
        self._overlap_sq_norms, self._overlap_stepped = [], set()
        self._after_update()
        return torch.ones((), dtype=torch.bool, device=self.device), sq.sqrt()

    # ----- checkpoint -----
    def _owns_state(self) -> bool:
        """Replicated state is written by rank 0 only; sharded state by every rank."""
        return self.sharded or self.rank == 0

    def state_dict(self) -> dict | None:
        """Per-parameter state keyed by param name: the element range [start, end) this rank holds of
        the flattened param, its fp32 main values, exp_avg, exp_avg_sq and step; plus the scaler."""
        if not self._owns_state():
            return None
        params = {}
        for r in self.regions:
            for s, name, p in zip(r.slices, r.names, r.main_params):
                st = r.adam_state(p)
                params[name] = {
                    "shape": list(s.param.shape), "start": s.param_start, "end": s.param_end,
                    "step": r.get_step(p),
                    "main": p.detach().cpu().clone(),
                    "exp_avg": st["exp_avg"].detach().cpu().clone(),
                    "exp_avg_sq": st["exp_avg_sq"].detach().cpu().clone(),
                }
        return {
            "format": STATE_FORMAT, "rank": self.rank, "world_size": self.world_size,
            "iteration": self.iteration, "params": params,
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
        }

    def load_state_dict(self, sds: list[dict | None]) -> None:
        """Load from every saved rank's dict (rank order; None entries skipped), under any world size.

        1. Index the saved pieces by param name.
        2. For each slice this rank updates, copy every overlapping saved piece into main/m/v at the
           matching offsets, and count the elements covered; a gap is a ValueError.
        3. Restore the step counts, the iteration and the loss scaler.
        """
        pieces: dict[str, list[dict]] = {}
        meta = None
        for sd in sds:
            if sd is None:
                continue
            if sd.get("format") != STATE_FORMAT:
                raise ValueError(f"optimizer state has format {sd.get('format')!r}, expected {STATE_FORMAT!r}")
            meta = meta or sd
            for name, piece in sd["params"].items():
                pieces.setdefault(name, []).append(piece)
        if meta is None:
            raise ValueError("no optimizer state in the checkpoint (every rank's dict is None)")
        for r in self.regions:
            for s, name, p in zip(r.slices, r.names, r.main_params):
                self._load_slice(r, s, name, p, pieces.get(name, []))
        self.iteration = int(meta["iteration"])
        if self.grad_scaler is not None and meta.get("grad_scaler") is not None:
            self.grad_scaler.load_state_dict(meta["grad_scaler"])

    @staticmethod
    def _load_slice(r: _Region, s: ParamSlice, name: str, p, pieces: list[dict]) -> None:
        st = r.adam_state(p)
        covered, step = 0, None
        with torch.no_grad():
            for piece in pieces:
                if list(piece["shape"]) != list(s.param.shape):
                    raise ValueError(f"param {name!r}: checkpoint shape {piece['shape']} != model shape "
                                     f"{list(s.param.shape)}; the checkpoint is from another model config")
                lo, hi = max(s.param_start, piece["start"]), min(s.param_end, piece["end"])
                if lo >= hi:
                    continue
                dst, src = slice(lo - s.param_start, hi - s.param_start), slice(lo - piece["start"], hi - piece["start"])
                p[dst].copy_(piece["main"][src])
                st["exp_avg"][dst].copy_(piece["exp_avg"][src])
                st["exp_avg_sq"][dst].copy_(piece["exp_avg_sq"][src])
                covered += hi - lo
                step = piece["step"]
        if covered != s.numel:
            raise ValueError(f"param {name!r}: the checkpoint covers {covered} of elements [{s.param_start}, "
                             f"{s.param_end}) this rank needs; it is incomplete (missing optim/rank_*.pt?) "
                             f"or from another model")
        r.set_step(p, step)
        if not r.alias_params:
            r.buffer.param_data[r.start + s.shard_start:r.start + s.shard_end].copy_(p.detach())


class Float16OptimizerWithFloat16Params(MixedPrecisionOptimizer):
    """bf16/fp16 model params with fp32 main params; fp16 adds loss scaling (dynamic or fixed)."""


class FP32Optimizer(MixedPrecisionOptimizer):
    """fp32 model params: the main params are the model's own buffer, the grads its fp32 main_grad."""
