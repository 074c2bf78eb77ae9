"""Hand-written bucketed data parallelism over ParamAndGradBuffer, with comm hooks and overlapped grad reduce.

Per step (see DistributedDataParallel):
  zero_grad_buffer() -> [no_sync(): forward/backward]* -> forward/backward -> finish_grad_sync() -> optimizer.
Every rank issues its collectives in the same order: buckets are launched strictly in global bucket order
(buffers in creation order, buckets in buffer order = backward order), a bucket that is ready early waits for
its predecessors. Mismatched orders would deadlock NCCL or silently sum different buckets.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import weakref

import torch
from torch import nn

from parallel.collectives import all_gather
from parallel.bucket_sync import BucketSync, SyncStatus
from parallel.comm_hooks.bucket import BucketParam, CommHook, GradBucket, Hook, HookState, PostReduce
from parallel.comm_hooks.registry import build_hook
from parallel.config import DDPConfig
from parallel.dist import DistContext
from parallel.param_and_grad_buffer import ParamAndGradBuffer


@functools.lru_cache(maxsize=None)
def _has_addmm_out_dtype() -> bool:
    """torch has aten::addmm.dtype_out: bf16 inputs, an fp32 accumulator and output in one cuBLAS call."""
    return "dtype_out" in torch.ops.aten.addmm.overloads()


def addmm_into(acc: torch.Tensor, grad_out: torch.Tensor, inp: torch.Tensor) -> None:
    """acc += grad_out^T @ inp, in place: grad_out (N, out), inp (N, in), acc (out, in).

    1. Same dtypes: one addmm_ (the GEMM accumulates with beta = 1).
    2. fp32 acc from bf16/fp16 inputs on CUDA: addmm with out_dtype=fp32 into acc, so cuBLAS reads acc as C and
       writes the fp32 sum (no bf16 product, no separate add kernel).
    3. Otherwise (no such kernel, e.g. on the CPU): the product in the input dtype, then an add.
    """
    if acc.dtype == grad_out.dtype:
        acc.addmm_(grad_out.t(), inp)
    elif acc.is_cuda and acc.dtype == torch.float32 and _has_addmm_out_dtype():
        torch.addmm(acc, grad_out.t(), inp, out_dtype=torch.float32, out=acc)
    else:
        acc.add_(grad_out.t() @ inp)


class _WeightGradSink:
    """What the DDP hands to the model for gradient-accumulation fusion (model/ops/linear.py's protocol).

    It holds the DDP weakly, for the reason given in DistributedDataParallel._make_grad_hook; once the DDP
    is gone it declines every weight and the model falls back to autograd's grads.
    """

    __slots__ = ("_ddp",)

    def __init__(self, ddp: "DistributedDataParallel"):
        self._ddp = weakref.ref(ddp)

    def accumulate_wgrad(self, weight: torch.Tensor, grad_out: torch.Tensor, inp: torch.Tensor) -> bool:
        ddp = self._ddp()
        return ddp is not None and ddp._accumulate_wgrad(weight, grad_out, inp)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Equal devices, reading a CUDA device without an index ("cuda") as the current one."""
    def norm(d: torch.device):
        if d.type == "cuda" and d.index is None:
            return d.type, torch.cuda.current_device()
        return d.type, d.index
    return norm(a) == norm(b)


class DistributedDataParallel(nn.Module):
    """Wrap `module`: grads go into flat per-dtype buffers and are reduced bucket by bucket by a comm hook.

    1. Group the trainable params by (param dtype, grad dtype) and build one ParamAndGradBuffer per group
       (params re-pointed into it); frozen params stay outside.
    2. Register a post-accumulate-grad hook per param: add param.grad into its main_grad, free param.grad,
       and outside no_sync() mark the param ready in its bucket. With gradient_accumulation_fusion, the model
       (if it has set_weight_grad_sink) gets a sink instead for its linear weights: their weight-grad GEMMs
       accumulate into main_grad directly and then do the same bookkeeping.
    3. With overlap_grad_reduce, a bucket whose params are all ready is launched at once (in global order) on a
       communication stream; finish_grad_sync() launches what is left (buckets with unused params reduce
       their zeros) and waits for every future.
    """

    def __init__(self, module: nn.Module, ddp_config: DDPConfig, ctx: DistContext):
        super().__init__()
        ddp_config.validate()
        self.module, self.config, self.ctx = module, ddp_config, ctx
        self.param_to_name = {p: n for n, p in module.named_parameters()}
        trainable = [p for p in self.param_to_name if p.requires_grad]
        if not trainable:
            raise ValueError("DistributedDataParallel: the module has no parameter with requires_grad=True")
        for p in trainable:
            if not _same_device(p.device, ctx.device):
                raise ValueError(f"param {self.param_to_name[p]} is on {p.device} but the DistContext device is "
                                 f"{ctx.device}; call model.to(ctx.device) before wrapping")
        self.buffers = self._build_buffers(trainable)
        self.grad_scale: float | torch.Tensor = 1.0 / ctx.world_size
        self._buckets = self._build_grad_buckets()
        self._syncs = [BucketSync(b.index, len(b.params)) for b in self._buckets]
        self._main_grads: dict[nn.Parameter, torch.Tensor] = {}
        self._sync_of: dict[nn.Parameter, BucketSync] = {}
        for buf in self.buffers:
            for p in buf.params:
                self._main_grads[p] = buf.main_grad(p)
        for b, sync in zip(self._buckets, self._syncs):
            for bp in b.params:
                self._sync_of[bp.param] = sync
        self._sync_enabled = True
        self._next_launch = 0
        self._seen: set = set()
        self._comm_stream = torch.cuda.Stream(device=ctx.device) if ctx.device.type == "cuda" else None
        self._zeroed = None  # CUDA event: the comm stream zeroed the grad buffers (zero_grad_buffer)
        self._gather_pending = False
        self._prehooks_installed = False
        state, hook = build_hook(ddp_config)
        self._comm_hook = CommHook(state, hook)
        self._check_hook_state(state)
        self._post_reduce: PostReduce | None = None
        grad_hook = self._make_grad_hook()
        self._hook_handles = [p.register_post_accumulate_grad_hook(grad_hook) for p in trainable]
        self._install_weight_grad_sink()

    def _install_weight_grad_sink(self) -> None:
        """Hand the model a weight-grad sink when gradient_accumulation_fusion asks for one (see step 2)."""
        mode = self.config.gradient_accumulation_fusion
        if mode == "off" or (mode == "auto" and self.ctx.device.type != "cuda"):
            return
        setter = getattr(self.module, "set_weight_grad_sink", None)
        if setter is None:
            if mode == "on":
                raise ValueError(f"--gradient_accumulation_fusion=on needs a model with set_weight_grad_sink "
                                 f"(Z2allForCausalLM); {type(self.module).__name__} has none: use auto or off")
            return
        setter(_WeightGradSink(self))

    def _build_buffers(self, trainable: list[nn.Parameter]) -> list[ParamAndGradBuffer]:
        groups: dict[tuple[torch.dtype, torch.dtype], list[nn.Parameter]] = {}
        for p in trainable:
            grad_dtype = torch.float32 if self.config.grad_reduce_in_fp32 else p.dtype
            groups.setdefault((p.dtype, grad_dtype), []).append(p)
        return [ParamAndGradBuffer(ps, pd, gd, self.config.bucket_size, self.ctx.world_size,
                                   self.config.disable_bucketing) for (pd, gd), ps in groups.items()]

    def _build_grad_buckets(self) -> tuple[GradBucket, ...]:
        """The hook-facing view of every buffer bucket; the index is the launch order (buffers, then buckets)."""
        group = self.ctx.group if self.ctx.world_size > 1 else None
        out: list[GradBucket] = []
        for buf in self.buffers:
            for b in buf.buckets:
                params = []
                for p in b.params:
                    start, end, _ = buf.param_index_map[p]
                    params.append(BucketParam(self.param_to_name[p], p, p.shape, start - b.offset, end - b.offset))
                out.append(GradBucket(len(out), b.grad_data, b.param_data, tuple(params), self.grad_scale, group,
                                      self.ctx.rank, self.ctx.world_size))
        return tuple(out)

    # ------------------------------------------------------------------ public API
    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def main_grad(self, param: nn.Parameter) -> torch.Tensor:
        """The fp32 (or grad-dtype) accumulated gradient of `param`: a view into its buffer's grad_data."""
        self._wait_zeroed()
        try:
            return self._main_grads[param]
        except KeyError:
            name = self.param_to_name.get(param, f"<param of shape {tuple(param.shape)}>")
            raise ValueError(f"{name} is not managed by this DDP (frozen, or not part of the module)") from None

    @property
    def use_distributed_optimizer(self) -> bool:
        """ZeRO-1 (DDPConfig.use_distributed_optimizer): the optimizer built on this DDP shards its state."""
        return self.config.use_distributed_optimizer

    @property
    def buckets(self) -> tuple[GradBucket, ...]:
        """Every bucket as the comm hooks see it, in launch order (bucket.index is the position here).

        The tuple is rebuilt by set_grad_scale: hold an index, not a bucket, across steps.
        """
        return self._buckets

    @property
    def comm_hook(self) -> CommHook:
        """The registered (state, hook); a wrapper calls it from its own hook, registered with register_comm_hook.
        Its state is what a checkpoint saves per rank (state_dict/load_state_dict) and the log reports (metrics)."""
        return self._comm_hook

    def set_grad_scale(self, scale: float | torch.Tensor) -> None:
        """Factor applied to the grads by the comm hook: 1/world (mean, default) or 1/total_tokens (sum loss)."""
        self.grad_scale = scale
        self._buckets = tuple(dataclasses.replace(b, grad_scale=scale) for b in self._buckets)

    def register_comm_hook(self, state: HookState, hook: Hook) -> None:
        """Use `hook(state, bucket) -> Future[Tensor]` for every bucket from now on (not during a sync)."""
        if not callable(hook):
            raise TypeError(f"hook must be callable, got {type(hook).__name__}")
        self._check_hook_state(state)
        self._refuse_during_sync("register_comm_hook")
        self._comm_hook = CommHook(state, hook)

    @staticmethod
    def _check_hook_state(state) -> None:
        if not isinstance(state, HookState):
            raise TypeError(f"a comm hook state needs state_dict(), load_state_dict() and metrics() (the checkpoint "
                            f"and the log read them); {type(state).__name__} lacks some")

    def register_post_reduce(self, callback: PostReduce | None) -> None:
        """Call `callback(bucket)` as soon as each bucket's reduction is done, on the stream the hook ran on (the
        comm stream on CUDA), overlapping the rest of the backward; finish_grad_sync() waits for it. The optimizer
        offers one (its post_reduce_callback: the bucket's grad norms, or its step with --overlap_optim_step) and
        train.py wires it. None removes it."""
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
        self._refuse_during_sync("register_post_reduce")
        self._post_reduce = callback

    def _refuse_during_sync(self, what: str) -> None:
        busy = [s.index for s in self._syncs if s.in_flight]
        if busy:
            raise RuntimeError(f"{what} during a grad sync (buckets {busy} in flight); call finish_grad_sync() first")

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate grads without reducing them (all micro-batches but the last of a step)."""
        previous, self._sync_enabled = self._sync_enabled, False
        try:
            yield
        finally:
            self._sync_enabled = previous

    def weights_changed(self) -> None:
        """Tell the module its weights may have been written outside autograd (an optimizer step, ZeRO-1's gather, a
        load), through its `new_weight_step()` when it has one: caches derived from them (Z2all's FP8 weight
        copies) are then made again at their next use. The optimizer calls it after writing the params."""
        new_step = getattr(self.module, "new_weight_step", None)
        if new_step is not None:
            new_step()

    def zero_grad_buffer(self) -> None:
        """Zero every main_grad and reset the buckets for a new step.

        A new step also means weights_changed(): whatever wrote the weights since the last step (a checkpoint
        load, a broadcast, a driver's own update) is seen by the step's first forward.
        """
        self._refuse_during_sync("zero_grad_buffer()")
        self.weights_changed()
        for s in self._syncs:
            s.reset()
        self._zero_grad_data()
        for p in self._main_grads:
            p.grad = None
        self._seen.clear()
        self._next_launch = 0

    def _zero_grad_data(self) -> None:
        """Zero every grad buffer; on CUDA on the comm stream, so the memory-bound fill overlaps the forward.

        Ordering: the comm stream first waits for the compute stream (the optimizer of the previous step may
        still read the grads), and an event marks the fill's end; the compute stream waits for that event before
        the first write or read of the grads (_wait_zeroed: the first accumulation, main_grad(),
        finish_grad_sync()). Reductions are issued on the comm stream too, so they follow the fill.
        """
        if self._comm_stream is None:
            for buf in self.buffers:
                buf.grad_data.zero_()
            return
        self._comm_stream.wait_stream(torch.cuda.current_stream(self.ctx.device))
        with torch.cuda.stream(self._comm_stream):
            for buf in self.buffers:
                buf.grad_data.zero_()
            self._zeroed = torch.cuda.Event()
            self._zeroed.record(self._comm_stream)

    def _wait_zeroed(self) -> None:
        if self._zeroed is not None:
            torch.cuda.current_stream(self.ctx.device).wait_event(self._zeroed)
            self._zeroed = None

    def finish_grad_sync(self) -> None:
        """Launch every bucket not yet launched (in order), then wait for all of them.

        1. Check that every trainable param got a gradient during the step (check_for_unused_params).
        2. Buckets still RESET become READY (their missing params contribute zeros) and are launched.
        3. Wait on each future (CUDA: the current stream waits; gloo: blocks) and on the comm stream.
        """
        if not self._sync_enabled:
            raise RuntimeError("finish_grad_sync() inside no_sync(); call it after the last micro-batch's backward")
        self._wait_zeroed()
        if self.config.check_for_unused_params and len(self._seen) != len(self._main_grads):
            self._raise_unused()
        for s in self._syncs[self._next_launch:]:
            s.force_ready()
        self._launch_ready()
        for s in self._syncs:
            s.finish()
        if self._comm_stream is not None:
            torch.cuda.current_stream(self.ctx.device).wait_stream(self._comm_stream)
        self._seen.clear()

    def broadcast_params(self) -> None:
        """Copy rank 0's params (buffers and frozen params) to every rank; call once after construction."""
        if self.ctx.group is None or self.ctx.world_size == 1:
            return
        src = torch.distributed.get_global_rank(self.ctx.group, 0)
        with torch.no_grad():
            for buf in self.buffers:
                torch.distributed.broadcast(buf.param_data, src=src, group=self.ctx.group)
            for p in self.param_to_name:
                if p not in self._main_grads:
                    torch.distributed.broadcast(p.data, src=src, group=self.ctx.group)

    # ------------------------------------------------------------------ grad hooks
    def _make_grad_hook(self):
        """The post-accumulate-grad hook shared by every param; it holds only a weak reference to the DDP.

        Why weak: torch keeps a tensor's post-accumulate-grad hooks alive from C++ (the tensor's autograd
        metadata), an edge the garbage collector cannot see. A hook closing over the DDP, a main_grad view or a
        bucket would close the cycle param -> hook -> DDP/bucket -> param outside the collector's view, and
        the model, its buffers and the DDP would never be freed after `del`.
        """
        ddp_ref = weakref.ref(self)

        def hook(p: nn.Parameter) -> None:
            ddp = ddp_ref()
            if ddp is not None:
                ddp._on_grad(p)

        return hook

    def _on_grad(self, p: nn.Parameter) -> None:
        """Add p.grad into its main_grad, free p.grad, mark p ready in its bucket (launching it when complete)."""
        if p.grad is None:
            # autograd still runs the AccumulateGrad node (and so this hook) when an op returned no gradient
            # for p: the weight-grad sink already accumulated it and did the bookkeeping
            return
        self._check_bucket_open(p)
        self._wait_zeroed()
        self._main_grads[p].add_(p.grad)
        p.grad = None
        self._mark_grad_done(p)

    def _accumulate_wgrad(self, weight: torch.Tensor, grad_out: torch.Tensor, inp: torch.Tensor) -> bool:
        """The sink's work: main_grad += grad_out^T @ inp in the GEMM, then _on_grad's bookkeeping."""
        main = self._main_grads.get(weight)
        if main is None:
            return False
        self._check_bucket_open(weight)
        self._wait_zeroed()
        addmm_into(main, grad_out, inp)
        self._mark_grad_done(weight)
        return True

    def _check_bucket_open(self, p: nn.Parameter) -> None:
        sync = self._sync_of[p]
        if sync.reduced:
            raise RuntimeError(
                f"{self.param_to_name[p]} got a gradient after its bucket {sync.index} was reduced "
                f"({sync.status.name}); run extra micro-batches under ddp.no_sync() and call "
                "zero_grad_buffer() before the next step")

    def _mark_grad_done(self, p: nn.Parameter) -> None:
        self._seen.add(p)
        if self.config.overlap_grad_reduce and self._sync_enabled and self._sync_of[p].grad_ready(p):
            self._launch_ready()

    def _launch_ready(self) -> None:
        """Launch consecutive READY buckets starting at the next unlaunched one (same order on every rank)."""
        while self._next_launch < len(self._syncs) and self._syncs[self._next_launch].status == SyncStatus.READY:
            self._launch(self._syncs[self._next_launch])
            self._next_launch += 1

    def _launch(self, sync: BucketSync) -> None:
        if self._comm_stream is None:
            sync.start(self._run_hook(self._buckets[sync.index]))
            return
        # the comm stream must see the finished grads of this backward: wait on the compute stream first
        self._comm_stream.wait_stream(torch.cuda.current_stream(self.ctx.device))
        with torch.cuda.stream(self._comm_stream):
            sync.start(self._run_hook(self._buckets[sync.index]))

    def _run_hook(self, bucket: GradBucket) -> torch.futures.Future:
        """The comm hook on `bucket`, then the post-reduce callback once its value is there (not on an error)."""
        state, hook = self._comm_hook
        fut = hook(state, bucket)
        callback = self._post_reduce
        if callback is None:
            return fut

        def call_then_pass(f: torch.futures.Future):
            value = f.value()
            callback(bucket)
            return value

        return fut.then(call_then_pass)

    def _raise_unused(self) -> None:
        missing = [self.param_to_name[p] for p in self._main_grads if p not in self._seen]
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise RuntimeError(
            f"{len(missing)} trainable param(s) received no gradient during this step: {shown}. "
            "Freeze them (requires_grad=False) before wrapping in DDP, make the forward use them, or set "
            "--check_for_unused_params=False (their grads are then reduced as zeros)")

    # ------------------------------------------------------------------ ZeRO-1 param all-gather
    def start_param_sync(self, overlap: bool) -> None:
        """All-gather each bucket's rank shard of param_data (after a ZeRO-1 step updated only the own shard).

        Gathers are issued last bucket first (the first layers' params live in the last buckets). With
        overlap, forward pre-hooks wait on a bucket's gather just before the first module using its params;
        without, all gathers are waited here. A previous gather still pending is finished first.
        """
        self.finish_param_sync()
        if self.ctx.group is None or self.ctx.world_size == 1:
            return
        for s in reversed(self._syncs):
            b = self._buckets[s.index]
            start, end = b.shard_range()
            s.start_gather(all_gather(b.param_data, b.param_data[start:end], group=b.group, async_op=True))
        self._gather_pending = True
        if overlap:
            self._install_prehooks()
        else:
            self.finish_param_sync()

    def finish_param_sync(self) -> None:
        """Wait for every pending param gather (a no-op when none is pending)."""
        if not self._gather_pending:
            return
        for s in reversed(self._syncs):
            s.wait_gather()
        self._gather_pending = False

    def _install_prehooks(self) -> None:
        if self._prehooks_installed:
            return
        for m in self.module.modules():
            syncs = {self._sync_of[p].index: self._sync_of[p] for p in m.parameters(recurse=False) if p in self._sync_of}
            if syncs:
                m.register_forward_pre_hook(self._make_prehook([syncs[i] for i in sorted(syncs)]))
        self._prehooks_installed = True

    def _make_prehook(self, syncs: list[BucketSync]):
        def prehook(module, args):
            if self._gather_pending:
                for s in syncs:
                    s.wait_gather()
        return prehook
