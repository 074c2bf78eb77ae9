"""Mixed-precision AdamW over the DDP's flat buffers: fp32 main params, loss scaling, global clipping.

Layout. The optimizer works on *regions* (optimizer/regions.py, one class per implementation): for every
bucket of the DDP (``ddp.buckets``), the part this rank updates. Without ZeRO-1 a region is the whole bucket;
with ZeRO-1 (optimizer/distributed.py) it is the rank's shard. Each region holds
- ``main``: an fp32 flat tensor of the region's elements: a copy of the model's params (bf16/fp16
  params), or the model's param buffer itself (fp32 params: nothing to copy). With --main_params=split (the
  default for bf16 with the triton impl) no fp32 tensor is kept: the model's bf16 params are the high
  half of each fp32 value and ``lo`` (int16) the low half (optimizer/fused_adamw.py), 2 bytes/param less;
- the grads: read in place from the DDP's grad buffer. No persistent fp32 copy is kept of bf16/fp16
  main grads: the triton kernel reads them directly, the torch path converts one region at a time
  (allocate, step, free), so the extra memory is one region's fp32 grads;
- one fp32 *view* of ``main`` per param slice in the region; weight decay is chosen per slice: params
  with ndim >= 2 are decayed, 1-D params not, even where they share a bucket;
- its Adam state and step, so one bucket can step on its own (``--overlap_optim_step``).

--optimizer_impl (auto: triton on CUDA when importable, else torch_fused; foreach on the CPU):
- triton (optimizer/fused_adamw.py): one pass per region over grad, main, m, v that also writes the
  cast model params; m/v are flat per region; the unscale and clip factors arrive as one device tensor;
- torch_fused / foreach / apex: a torch optimizer per region over the per-slice views (m/v per slice),
  grads multiplied by the unscale and clip factors first, then a cast copy into the model's params.

Host syncs. bf16/fp32 steps make none: the clip coefficient is applied as a tensor (multiplying by
exactly 1.0 when under the limit). fp16 makes exactly one per step: the all-reduced found_inf flag
is read on the host to skip the step and update the loss scale. The flag comes from the squared
grad norm (non-finite iff a grad is inf/NaN, or beyond ~1e19), so no separate unscale pass is
needed; only the torch path over fp32 grads keeps the in-place unscale with an element-wise check.
(A sync-free skip would need every AdamW update masked by the flag, including m/v and the step
count, which torch's fused kernels do not support; one sync per fp16 step is cheap next to a
forward/backward.)
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from optimizer.clip import clip_coefficient, norm_from_squared, squared_norm, tensor_norms
from optimizer.config import OptimizerConfig
from optimizer.grad_scaler import ConstantGradScaler, DynamicGradScaler
from optimizer.regions import Region, StepScales, make_region
from parallel.comm_hooks.bucket import GradBucket, PostReduce
from utils.triton_env import triton_available

STATE_FORMAT = "z2all.optimizer.v1"


def resolve_optimizer_impl(impl: str, device: torch.device) -> str:
    """--optimizer_impl to a concrete one: auto = triton on CUDA when importable, else torch_fused on CUDA,
    foreach elsewhere (the CPU path the bitwise tests compare against)."""
    if impl != "auto":
        return impl
    if device.type == "cuda":
        return "triton" if triton_available() else "torch_fused"
    return "foreach"


def resolve_main_params(mode: str, impl: str, param_dtype: torch.dtype) -> str:
    """--main_params for one param dtype: "split" (bf16 params hold the high half, see fused_adamw.split_main)
    or "fp32" (a separate copy; fp32 params are their own main params). auto = split for bf16 with triton."""
    if param_dtype != torch.bfloat16 or mode == "fp32":
        if mode == "split":
            raise ValueError(f"--main_params=split keeps the high half of each fp32 value in the model's bf16 "
                             f"params, but they are {param_dtype}: use --dtype=bfloat16 or --main_params=auto")
        return "fp32"
    if mode == "split" and impl != "triton":
        raise ValueError(f"--main_params=split needs --optimizer_impl=triton (the resolved impl is {impl!r}; "
                         f"triton runs on CUDA); use --main_params=auto or fp32")
    return "split" if impl == "triton" else "fp32"


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
        self.impl = resolve_optimizer_impl(cfg.optimizer_impl, self.device)
        self.regions: list[Region] = []
        for bucket in ddp.buckets:
            split = resolve_main_params(cfg.main_params, self.impl, bucket.param_data.dtype) == "split"
            lo, hi = self._region_range(bucket)
            self.regions.append(make_region(bucket, lo, hi, cfg, self.impl, split))
        # the exact legacy fp16 path: unscale the fp32 grads in place, with an element-wise inf/NaN check
        self._unscale_in_place = all(r.unscales_in_place for r in self.regions)
        self._one = torch.ones((), dtype=torch.float32, device=self.device)
        self._region_of_bucket = {r.index: r for r in self.regions}
        self.grad_scaler = self._make_scaler()
        self.iteration = 0  # optimizer.step() calls, skipped ones included
        self._overlap_sq_norms: list[torch.Tensor] = []
        self._overlap_stepped: set[int] = set()
        self._bucket_norms: dict[int, torch.Tensor] = {}
        self.overlap_optim_step = cfg.overlap_optim_step
        # a bucket steps before later buckets are reduced: no global inf check (configurator.validate())
        assert not (self.overlap_optim_step and self.grad_scaler is not None), "--overlap_optim_step with fp16"

    # ----- subclass points -----
    def _region_range(self, bucket: GradBucket) -> tuple[int, int]:
        """The elements of the bucket this rank updates, local to the bucket: all of them."""
        return 0, bucket.numel

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
        for r in self.regions:
            r.reload_model_params()

    def set_lr(self, lr: float) -> None:
        """Set the LR of every group. With --overlap_optim_step call it before the backward."""
        for r in self.regions:
            r.set_lr(lr)

    @property
    def overflow_recoverable(self) -> bool:
        """A skipped step is the loss scaler at work (fp16 above its minimum scale), not a sign of divergence."""
        return self.grad_scaler is not None and self.grad_scaler.scale > self.cfg.min_loss_scale

    def step(self) -> tuple[bool, torch.Tensor]:
        """One optimizer step after ``ddp.finish_grad_sync()``; returns (stepped, grad_norm tensor).

        1. Squared grad norm of this rank's grads, read where the DDP reduced them (any grad dtype).
           fp16: inf/NaN anywhere makes it non-finite; the flag is all-reduced (MAX) and read once on
           the host; on overflow lower the scale and return without touching params or Adam state.
           (torch impl with fp32 grads instead unscales in place with an element-wise check, as before.)
        2. Global grad norm (sharded: summed over ranks), unscaled. With --skip_nonfinite, an inf/NaN norm on any
           rank (_nonfinite_norm) returns stepped=False on every rank before anything is updated.
           Clip coefficient when --grad_clip > 0.
        3. Every region steps with grads times 1/loss_scale times the clip coefficient (device tensors:
           the triton kernel takes their product, the torch path multiplies a temporary or fp32 grads),
           and the model's params are updated; subclass hook (ZeRO-1: all-gather).
        """
        self.iteration += 1
        if self.overlap_optim_step:
            return self._finish_overlapped_step()
        grads = [g for r in self.regions for g in r.grad_views()]
        inv_scale = None
        if self.grad_scaler is not None and self._unscale_in_place:
            found_inf = self._unscale_and_check(grads)
            sq = squared_norm(grads, self.device)
        else:
            sq = self._squared_norm(grads)
            found_inf = self.grad_scaler is not None and self._nonfinite_anywhere(sq)
            if self.grad_scaler is not None:
                inv_scale = torch.full((), self.grad_scaler.inv_scale, dtype=torch.float32, device=self.device)
        if found_inf:
            self.grad_scaler.update(True)
            return False, torch.full((), math.inf, device=self.device)
        norm = norm_from_squared(sq, self.sharded, self.group, self.world_size)
        if inv_scale is not None:
            norm = norm * inv_scale
        if self.cfg.skip_nonfinite and self.grad_scaler is None and self._nonfinite_norm(norm):
            return False, norm
        coef = clip_coefficient(norm, self.cfg.grad_clip) if self.cfg.grad_clip > 0 else None
        scales = StepScales(inv_scale, coef, self._one)
        for r in self.regions:
            r.step(scales)
        if self.grad_scaler is not None:
            self.grad_scaler.update(False)
        self._after_update()
        self.ddp.weights_changed()
        return True, norm

    def _nonfinite_norm(self, norm: torch.Tensor) -> bool:
        """True when the global grad norm is inf/NaN on any rank: one host read. Sharded, the norm is already an
        all-reduced sum; replicated, a flag is all-reduced, so a rank whose copy went bad still agrees."""
        flag = (~torch.isfinite(norm)).float().reshape(1)
        return bool(flag.item()) if self.sharded else self._any_rank(flag)

    def _unscale_and_check(self, grads: list[torch.Tensor]) -> bool:
        """Unscale fp32 grads in place; True when any rank saw inf/NaN (the one host sync of an fp16 step)."""
        found_inf = torch.zeros(1, dtype=torch.float32, device=self.device)
        if grads:
            inv = torch.full((1,), self.grad_scaler.inv_scale, dtype=torch.float32, device=self.device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv)
        return self._any_rank(found_inf)

    def _nonfinite_anywhere(self, sq: torch.Tensor) -> bool:
        """True when any rank's squared grad norm is inf/NaN (an inf/NaN grad, or a sum of squares past the fp32
        range, which only grads beyond ~1e19 reach); the one host sync of an fp16 step."""
        return self._any_rank((~torch.isfinite(sq)).float().reshape(1))

    def _any_rank(self, flag: torch.Tensor) -> bool:
        if self.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    # ----- per-bucket work as soon as a bucket is reduced (DistributedDataParallel.register_post_reduce) -----
    @property
    def post_reduce_callback(self) -> PostReduce | None:
        """What to run on each bucket as soon as its reduction is done; the caller hands it to
        ``ddp.register_post_reduce`` (train.py does). --overlap_optim_step: step the bucket (required: step()
        refuses buckets that did not step). Otherwise, bf16/fp32: take its grad norms, so step() only sums them
        (optional: step() computes them itself when none were recorded). fp16: None, its inf check must see the
        grads as they are at step()."""
        if self.overlap_optim_step:
            return self.step_bucket
        return self.record_bucket_norms if self.grad_scaler is None else None

    def record_bucket_norms(self, bucket: GradBucket) -> None:
        """Comm-hook callback: the bucket's grads are reduced; take the norm of each of its grads now.

        On CUDA this runs beside the rest of the backward (the callback's stream is synchronized with the
        reduction, and finish_grad_sync() waits for it); step() then only sums the recorded norms.
        """
        r = self._region_of_bucket[bucket.index]
        self._bucket_norms[bucket.index] = tensor_norms(r.grad_views(), self.device)

    def _squared_norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """This rank's squared grad norm: from the norms recorded during this step's reduction when every bucket
        has one (the same vector in the same order as squared_norm(grads) builds: bitwise equal), else computed
        now (no DDP sync ran, e.g. grads written by hand). The records are consumed either way."""
        recorded, self._bucket_norms = self._bucket_norms, {}
        keys = [r.index for r in self.regions]
        if keys and all(k in recorded for k in keys):
            return torch.cat([recorded[k] for k in keys]).square().sum()
        return squared_norm(grads, self.device)

    def step_bucket(self, bucket: GradBucket) -> None:
        """Comm-hook callback: the bucket's reduction finished; step its region now.

        Exact only without a global dependency (no clipping, no loss scaling); build_optimizer
        rejects the other combinations. The region's squared grad norm is kept for logging.
        """
        r = self._region_of_bucket[bucket.index]
        self._overlap_sq_norms.append(squared_norm(r.grad_views(), self.device))
        r.step(StepScales(None, None, self._one))
        self._overlap_stepped.add(bucket.index)

    def _finish_overlapped_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [r.index for r in self.regions if r.index not in self._overlap_stepped]
        if missing:
            raise RuntimeError(
                f"--overlap_optim_step: buckets {missing} were not stepped this iteration; register the optimizer's "
                f"post_reduce_callback with ddp.register_post_reduce() and call ddp.finish_grad_sync() after the "
                f"last backward, before optimizer.step()"
            )
        sq = torch.stack(self._overlap_sq_norms).sum() if self._overlap_sq_norms else torch.zeros((), device=self.device)
        if self.sharded and self.world_size > 1:
            dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=self.group)
        self._overlap_sq_norms, self._overlap_stepped = [], set()
        self._after_update()  # the buckets stepped as they were reduced: nothing left to skip
        self.ddp.weights_changed()
        return True, sq.sqrt()

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
            for i, (s, name) in enumerate(zip(r.slices, r.names)):
                st = r.adam_state(i)
                params[name] = {
                    "shape": list(s.param.shape), "start": s.param_start, "end": s.param_end,
                    "step": r.get_step(i),
                    "main": r.main_values(i).cpu().clone(),
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
            for i, name in enumerate(r.names):
                self._load_slice(r, i, name, pieces.get(name, []))
        self.iteration = int(meta["iteration"])
        if self.grad_scaler is not None and meta.get("grad_scaler") is not None:
            self.grad_scaler.load_state_dict(meta["grad_scaler"])
        self.ddp.weights_changed()  # split main params hold their high half in the model's params

    @staticmethod
    def _load_slice(r: Region, i: int, name: str, pieces: list[dict]) -> None:
        s, st = r.slices[i], r.adam_state(i)
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
                r.load_main(i, dst, piece["main"][src])
                st["exp_avg"][dst].copy_(piece["exp_avg"][src])
                st["exp_avg_sq"][dst].copy_(piece["exp_avg_sq"][src])
                covered += hi - lo
                step = piece["step"]
        if covered != s.numel:
            raise ValueError(f"param {name!r}: the checkpoint covers {covered} of elements [{s.param_start}, "
                             f"{s.param_end}) this rank needs; it is incomplete (missing optim/rank_*.pt?) "
                             f"or from another model")
        r.set_step(i, step)
