"""PowerSGD (Vogels et al., NeurIPS 2019): a comm hook that sends each gradient matrix as two rank-r factors.

An n×m gradient matrix M is sent as P (n×r) and Q (m×r), (n+m)·r numbers instead of n·m; every rank then holds
P·Qᵀ, the rank-r approximation that one step of subspace (power) iteration finds, warm-started from the last
step's Q. What the approximation misses stays on each rank (error feedback) and is added to the next step's
gradient, so over the steps the applied gradients add up to the true ones.

Per bucket and step (`powersgd_hook`; the code's step numbers refer to this list):
  0. Warm-up: a bucket's first `start_iter` steps, a bucket without a matrix worth compressing, and one process
     (nothing to send) reduce exactly as allreduce_hook does.
  1. Scale and add the error: each compressed param's grad slice, times grad_scale, plus this rank's error of
     the last step goes into M (fp32, laid out by matrix shape); the other grads, scaled, go into U.
  2. Matrices: a param of shape (n, ...) is an n×m matrix, m = numel / n. It is compressed when
     (n + m)·r·min_compression_rate < n·m, r = min(rank, n, m); so 1-D, small and skinny tensors are not.
     The params of one shape are one batch (B, n, m): each product below is one batched matmul per shape.
  3. P = M·Q, with Q orthogonalised: last step's Q (warm start) or seeded Gaussian noise, the same on every
     rank. Then ONE all-reduce of [P | U]: the uncompressed grads travel with P, one collective, not two.
  4. Orthogonalise P in fp32 (Gram–Schmidt, twice; dependent columns become zero, never NaN or noise).
  5. Q = Mᵀ·P, then ONE all-reduce of Q.
  6. M̂ = P·Qᵀ, the rank-r approximation of the sum over ranks of M, goes into the bucket's grads, and the
     reduced U too. The new error is M − M̂/world: the errors of all ranks add up to the part of the sum that M̂
     missed. (Orthogonalisation makes P independent of the scale of M and Q, so P, Q and the error all live in
     the units of the final, scaled gradient: a grad scale that changes between steps, 1/tokens, stays exact.)

Collective order. Every rank must issue the same collectives in the same order, and step 5's all-reduce can
only be issued once step 3's has completed. On gloo that completion runs on a gloo thread, while the DDP's
thread may be launching the next bucket; so the state keeps one chain: a bucket issues its first collective
only once the bucket before it has issued its last (`PowerSGDState._issued`), giving [P|U]₀, Q₀, [P|U]₁, Q₁, ...
on every rank. Nothing waits: each step is a callback of the future before it. On NCCL a collective's future is
complete once the collective is enqueued, so the whole chain is enqueued during the hook call.

Streams (CUDA). The DDP calls the hook under its communication stream, after that stream waited for the
bucket's grads. A future's callbacks run on a stream from torch's pool that has waited for the collective;
each step hands over to the comm stream and back (`_on_stream`), so the math of bucket k runs on the comm
stream, beside the backward of bucket k+1 on the compute stream, and the returned future's events cover it.

Against torch's powerSGD_hook (the reference): the same algorithm (trained through our DDP, both end 300 steps
of the default model at the same loss), with these differences. The uncompressed grads share P's all-reduce.
Matrices are always batched by shape. Gram–Schmidt runs twice at every rank and drops the columns it cannot
resolve (torch: one pass up to rank 2, which on a gradient of rank below r leaves P's extra columns as rounding
noise, and P·Pᵀ then is no projection; QR above rank 2). Any of these gives the same P up to column signs,
which P·Qᵀ does not see. A zero column gets a unit vector instead of NaN (torch) or staying zero for ever (a
warm-started Q of a zero gradient). The grad scale is applied before compression, so the error is in the
scaled units (torch's error is world× ours). The random Q depends on (seed, bucket, step) only, so the state
holds no RNG and a resume replays it. Fp16 params (loss scaling, steps skipped on overflow) reset the error
and Q after a non-finite step, which in torch would poison every later step. The step is counted per bucket,
so any number of buckets works; torch counts steps on its last bucket and must start at step 2 or later.
"""
from __future__ import annotations

import contextlib
import hashlib
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from parallel.collectives import work_future
from parallel.comm_hooks.bucket import BucketParam, GradBucket
from parallel.comm_hooks.default import DefaultHookState, allreduce_hook, apply_scale
from parallel.config import DDPConfig, check_powersgd

STATE_FORMAT = "z2all.powersgd.v1"
_FP32 = torch.float32
_FP32_BYTES = 4
_NORM_FLOOR = 1e-30  # a column norm below this divides by it instead: a column of zeros stays finite
_DEPENDENT = 1e-4  # a column keeping less of its norm than this after Gram–Schmidt is dropped (orthogonalize_)
_EXACT = DefaultHookState()  # step 0: the default all-reduce, scale applied before the sum


# ---------------------------------------------------------------------------------------------- the bucket's plan
@dataclass(frozen=True)
class _Group:
    """The params of one matrix shape in a bucket, compressed as one batch (B, n, m) at rank r (step 2)."""

    n: int
    m: int
    r: int
    params: tuple[BucketParam, ...]
    m_offset: int  # where the batch starts in M and in the error buffer (elements)
    p_offset: int  # ... in P (the head of the [P | U] buffer)
    q_offset: int  # ... in Q

    def mats(self, flat: torch.Tensor) -> torch.Tensor:
        b = len(self.params)
        return flat[self.m_offset:self.m_offset + b * self.n * self.m].view(b, self.n, self.m)

    def ps(self, flat: torch.Tensor) -> torch.Tensor:
        b = len(self.params)
        return flat[self.p_offset:self.p_offset + b * self.n * self.r].view(b, self.n, self.r)

    def qs(self, flat: torch.Tensor) -> torch.Tensor:
        b = len(self.params)
        return flat[self.q_offset:self.q_offset + b * self.m * self.r].view(b, self.m, self.r)


@dataclass(frozen=True)
class Plan:
    """How one bucket is compressed: the shape batches, in order of first appearance, and the rest (U)."""

    groups: tuple[_Group, ...]
    uncompressed: tuple[BucketParam, ...]
    m_numel: int
    p_numel: int
    q_numel: int
    u_numel: int

    @property
    def compressed(self) -> tuple[BucketParam, ...]:
        """The compressed params in M's order (by group, bucket order within a group)."""
        return tuple(p for g in self.groups for p in g.params)

    @property
    def layout(self) -> list[list]:
        """[name, n, m, r] per compressed param: what Q and the error buffer are laid out by (checkpoints)."""
        return [[p.name, g.n, g.m, g.r] for g in self.groups for p in g.params]

    @property
    def sent_elements(self) -> int:
        return self.p_numel + self.q_numel + self.u_numel


def _matrix_shape(shape: torch.Size) -> tuple[int, int] | None:
    """(n, m) of a param seen as a matrix (dim 0 × the rest); None for 0-D and 1-D params."""
    if len(shape) < 2 or shape.numel() == 0:
        return None
    return shape[0], shape.numel() // shape[0]


def make_plan(params: tuple[BucketParam, ...], rank: int, min_compression_rate: float) -> Plan:
    """Step 2 for a bucket's params: which ones are compressed, batched by shape, and where each batch lives."""
    by_shape: dict[tuple[int, int], list[BucketParam]] = {}
    uncompressed = []
    for p in params:
        nm = _matrix_shape(p.shape)
        r = min(rank, *nm) if nm is not None else 0
        if nm is not None and (nm[0] + nm[1]) * r * min_compression_rate < nm[0] * nm[1]:
            by_shape.setdefault(nm, []).append(p)
        else:
            uncompressed.append(p)
    groups, mo, po, qo = [], 0, 0, 0
    for (n, m), ps in by_shape.items():
        r = min(rank, n, m)
        groups.append(_Group(n, m, r, tuple(ps), mo, po, qo))
        mo, po, qo = mo + len(ps) * n * m, po + len(ps) * n * r, qo + len(ps) * m * r
    return Plan(tuple(groups), tuple(uncompressed), mo, po, qo, sum(p.numel for p in uncompressed))


# ---------------------------------------------------------------------------------------------- the math
def orthogonalize_(x: torch.Tensor, epsilon: float = 0.0) -> torch.Tensor:
    """Make the columns of each matrix of the batch x (B, n, r), r <= n, orthonormal in place (fp32), or zero.

    Gram–Schmidt, twice: column i has its components along columns 0..i-1 removed two times (one pass leaves
    them at rounding level relative to the column, which is far too much for a column that is nearly dependent),
    then is normalised. A column that keeps less than 1e-4 of its norm adds no direction of its own that fp32
    can resolve (a gradient of rank below r, a direction 1e-4 below the leading one): it becomes zero, not
    rounding noise, so P·Pᵀ stays a projection and M̂ stays exact for a gradient of rank <= r (what it drops,
    error feedback carries). Exactly-zero input columns (a zero gradient, or the warm-start Q it left, or a
    dropped column) first get the unit vector e_i: left at zero they would stay zero in every later warm-started
    step. `epsilon` > 0 is added to every norm (torch's orthogonalization_epsilon); otherwise norms are floored
    at 1e-30, so nothing divides by zero.
    """
    assert x.dim() == 3 and x.shape[2] <= x.shape[1] and x.dtype == _FP32, tuple(x.shape)
    dead = x.abs().amax(dim=1) == 0  # (B, r)
    x.diagonal(dim1=1, dim2=2).add_(dead)
    for i in range(x.shape[2]):
        col = x[:, :, i:i + 1]
        before = torch.linalg.vector_norm(col, dim=1, keepdim=True) if i > 0 else None
        if i > 0:
            done = x[:, :, :i]
            for _ in range(2):
                col.baddbmm_(done, done.transpose(1, 2).bmm(col), alpha=-1.0)
        norm = torch.linalg.vector_norm(col, dim=1, keepdim=True)
        scale = (norm + epsilon if epsilon > 0 else norm.clamp_min(_NORM_FLOOR)).reciprocal()
        if before is not None:
            scale.mul_(norm > _DEPENDENT * before)
        col.mul_(scale)
    return x


def _seed(seed: int, index: int, step: int) -> int:
    """The seed of the random Q of bucket `index` at `step`: the same on every rank, and after a resume."""
    digest = hashlib.blake2b(f"{seed}:{index}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _gather(flat: torch.Tensor, params: tuple[BucketParam, ...], out: torch.Tensor) -> torch.Tensor:
    """out <- the params' slices of flat, one after the other (cast to out's dtype)."""
    if params:
        torch.cat([flat[p.start:p.end] for p in params], out=out)
    return out


def _scatter(src: torch.Tensor, params: tuple[BucketParam, ...], flat: torch.Tensor) -> None:
    """The inverse of _gather: each param's part of src back into its slice of flat (cast to flat's dtype)."""
    offset = 0
    for p in params:
        flat[p.start:p.end].copy_(src[offset:offset + p.numel])
        offset += p.numel


class PowerSGDMemory:
    """What PowerSGD remembers of one bucket between steps: its plan, step count, warm-start Q and error feedback
    (not the bucket's sync status, which parallel/bucket_sync.BucketSync owns)."""

    __slots__ = ("plan", "step", "q", "error")

    def __init__(self, plan: Plan, step: int = 0):
        self.plan = plan
        self.step = step  # hook calls so far: compression starts at step == start_iter
        self.q: torch.Tensor | None = None  # fp32 (q_numel,): last step's all-reduced Q (warm start)
        self.error: torch.Tensor | None = None  # fp32 (m_numel,): this rank's error, laid out like M


class _Compression:
    """One bucket's steps 1–6 in one step: the buffers the steps share and the math of each (no collectives)."""

    def __init__(self, state: PowerSGDState, bs: PowerSGDMemory, bucket: GradBucket):
        self.state, self.bs, self.bucket, self.plan = state, bs, bucket, bs.plan
        self.step = bs.step
        # fp16 params mean loss scaling: an overflow step is skipped, and must not poison the steps after it
        self.guard = bucket.param_data.dtype == torch.float16
        self.m = self.comm = self.q = None

    def project(self) -> torch.Tensor:
        """Steps 1–3 up to the all-reduce: M and U from the grads, P = M·Q; returns the [P | U] buffer."""
        plan, b, dev = self.plan, self.bucket, self.bucket.grad_data.device
        self.m = _gather(b.grad_data, plan.compressed, torch.empty(plan.m_numel, dtype=_FP32, device=dev))
        self.comm = torch.empty(plan.p_numel + plan.u_numel, dtype=_FP32, device=dev)
        u = _gather(b.grad_data, plan.uncompressed, self.comm[plan.p_numel:])
        # scale in fp32, after the cast: low-precision grads lose nothing to it
        apply_scale(self.m, b.grad_scale)
        apply_scale(u, b.grad_scale)
        if self.state.use_error_feedback and self.bs.error is not None:
            self.m.add_(self.bs.error)
        self.q = self._start_q()
        for g in plan.groups:
            torch.bmm(g.mats(self.m), g.qs(self.q), out=g.ps(self.comm))
        return self.comm

    def _start_q(self) -> torch.Tensor:
        """Step 3's Q: last step's (warm start) or fresh seeded noise, orthogonalised in place."""
        state, bs = self.state, self.bs
        q = bs.q if state.warm_start else None
        if q is None:
            dev = self.bucket.grad_data.device
            gen = torch.Generator(device=dev)
            gen.manual_seed(_seed(state.seed, self.bucket.index, self.step))
            q = torch.empty(self.plan.q_numel, dtype=_FP32, device=dev).normal_(generator=gen)
            if state.warm_start:
                bs.q = q
        for g in self.plan.groups:
            orthogonalize_(g.qs(q), state.orthogonalization_epsilon)
        return q

    def project_back(self) -> torch.Tensor:
        """Steps 4–5 up to the all-reduce: orthogonalise the summed P, Q = Mᵀ·P; returns Q."""
        for g in self.plan.groups:
            p = orthogonalize_(g.ps(self.comm), self.state.orthogonalization_epsilon)
            torch.bmm(g.mats(self.m).transpose(1, 2), p, out=g.qs(self.q))
        return self.q

    def decompress(self) -> torch.Tensor:
        """Step 6: M̂ = P·Qᵀ and U into the grads, the new error; returns grad_data."""
        plan, bs, grads = self.plan, self.bs, self.bucket.grad_data
        ef = self.state.use_error_feedback
        # the old error was used in step 1: its buffer holds M̂ now and the new error below
        approx = (bs.error if bs.error is not None else torch.empty_like(self.m)) if ef else self.m
        for g in plan.groups:
            torch.bmm(g.ps(self.comm), g.qs(self.q).transpose(1, 2), out=g.mats(approx))
        if ef and grads.dtype != _FP32:
            approx.copy_(approx.to(grads.dtype))  # the error then also holds the rounding of the delivered grads
        _scatter(approx, plan.compressed, grads)
        _scatter(self.comm[plan.p_numel:], plan.uncompressed, grads)
        if ef:
            bs.error = torch.add(self.m, approx, alpha=-1.0 / self.bucket.world_size, out=approx)
        if self.guard:
            self._forget_nonfinite()
        return grads

    def _forget_nonfinite(self) -> None:
        """After a non-finite step (the all-reduced P or U holds inf/NaN on every rank alike, no host sync):
        zero the error and Q, so the skipped step leaves nothing behind (a zero Q restarts from unit vectors)."""
        bad = ~(torch.isfinite(self.comm).all() & torch.isfinite(self.q).all())
        for t in (self.bs.error, self.bs.q):
            if t is not None:
                t.masked_fill_(bad, 0.0)


# ---------------------------------------------------------------------------------------------- the state
def _completed() -> torch.futures.Future:
    fut = torch.futures.Future()
    fut.set_result(None)
    return fut


def _to_cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to("cpu", copy=True)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A checkpointed tensor as a live buffer: always a copy (the caller's dict must not alias it); to a GPU from
    pinned memory, so the copy (once per resume, on the comm stream) does not block the host."""
    t = t.to(dtype=_FP32)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device=device, copy=True)


class PowerSGDState:
    """PowerSGD's settings and its state per bucket (step, Q, this rank's error); it holds no process group.

    rank: the approximation rank r of each matrix. start_iter: steps of plain all-reduce (per bucket) before
    compression. min_compression_rate: compress an n×m matrix only when n·m > rate·(n+m)·r. use_error_feedback,
    warm_start: see the module docstring. orthogonalization_epsilon: added to every column norm (0: norms are
    floored at 1e-30 instead). seed: of the random Q, the same on every rank.

    Checkpoints: state_dict() holds plain tensors (on the CPU), ints, floats, bools, strings, lists and dicts, so
    torch.load(weights_only=True) reads it back:
        {"format": "z2all.powersgd.v1", "settings": {rank, start_iter, ...}, "world_size": W, "rank": R,
         "buckets": {index: {"step": int, "layout": [[name, n, m, r], ...], "q": Tensor | None,
                             "error": Tensor | None}}}
    Q is the same on every rank, the error is not: save one state_dict per rank and hand each rank its own back.
    On a resume with another world size (or another rank's file) error feedback restarts at zero, with a warning;
    Q and the steps are kept. A bucket whose compressed params differ from the checkpoint's (another model,
    --bucket_size or --powersgd_rank) restarts its Q and error, with a warning. The run's own settings win over
    the checkpoint's (a warning names the ones that differ).

    metrics() -> {"comm_compression_ratio": bytes sent / bytes of the uncompressed grads, "comm_bytes_sent":
    bytes this rank handed to collectives}, both for the last step (every bucket's last reduction); {} before
    the first. Bytes are payload: a ring all-reduce puts about 2·(W−1)/W of them on each rank's link.
    """

    def __init__(self, rank: int = 16, start_iter: int = 10, min_compression_rate: float = 2.0,
                 use_error_feedback: bool = True, warm_start: bool = True, orthogonalization_epsilon: float = 0.0,
                 seed: int = 0):
        check_powersgd(rank, start_iter, min_compression_rate, seed)
        if orthogonalization_epsilon < 0:
            raise ValueError(f"orthogonalization_epsilon must be >= 0, got {orthogonalization_epsilon}")
        self.rank, self.start_iter, self.min_compression_rate = rank, start_iter, min_compression_rate
        self.use_error_feedback, self.warm_start = use_error_feedback, warm_start
        self.orthogonalization_epsilon, self.seed = orthogonalization_epsilon, seed
        self._buckets: dict[int, PowerSGDMemory] = {}
        self._sources: dict[int, tuple[BucketParam, ...]] = {}  # the params each plan was made from
        self._where: tuple[int, int] | None = None  # (world size, rank) of the buckets seen
        self._loaded: dict[int, dict] = {}  # checkpointed buckets not seen since load_state_dict
        self._loaded_where: tuple[int, int] | None = None
        self._warned_where = False
        self._sent: dict[int, tuple[int, int]] = {}  # bucket -> (bytes sent, uncompressed bytes), last step
        self._issued = _completed()  # the last bucket has issued its last collective (module docstring)

    @classmethod
    def from_config(cls, cfg: DDPConfig) -> PowerSGDState:
        return cls(rank=cfg.powersgd_rank, start_iter=cfg.powersgd_start_iter,
                   min_compression_rate=cfg.powersgd_min_compression_rate,
                   use_error_feedback=cfg.powersgd_error_feedback, warm_start=cfg.powersgd_warm_start,
                   seed=cfg.powersgd_seed)

    def settings(self) -> dict:
        return {"rank": self.rank, "start_iter": self.start_iter, "min_compression_rate": self.min_compression_rate,
                "use_error_feedback": self.use_error_feedback, "warm_start": self.warm_start,
                "orthogonalization_epsilon": self.orthogonalization_epsilon, "seed": self.seed}

    def metrics(self) -> dict[str, float]:
        if not self._sent:
            return {}
        sent = sum(s for s, _ in self._sent.values())
        full = sum(f for _, f in self._sent.values())
        return {"comm_compression_ratio": sent / full, "comm_bytes_sent": float(sent)}

    # ----- checkpoints -----
    def state_dict(self) -> dict:
        """This rank's state (see the class docstring); call it after finish_grad_sync()."""
        where = self._where or self._loaded_where
        stale = self._loaded_where != where  # loaded errors of another world are not this one's to pass on
        buckets = {i: {**b, "error": None if stale else b["error"]} for i, b in self._loaded.items()}
        for i, bs in self._buckets.items():
            buckets[i] = {"step": bs.step, "layout": bs.plan.layout, "q": _to_cpu(bs.q), "error": _to_cpu(bs.error)}
        world, rank = where if where is not None else (None, None)
        return {"format": STATE_FORMAT, "settings": self.settings(), "world_size": world, "rank": rank,
                "buckets": buckets}

    def load_state_dict(self, state: dict) -> None:
        """Take a state_dict of this rank; it is applied bucket by bucket when each is next reduced."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a PowerSGD hook state (format {got!r}, expected {STATE_FORMAT!r}): was the "
                             f"checkpoint written with another --comm_hook? Resume with the run's --comm_hook")
        ours = self.settings()
        differ = {k: v for k, v in state["settings"].items() if ours.get(k) != v}
        if differ:
            warnings.warn(f"PowerSGD settings differ from the checkpoint's {differ}: this run's "
                          f"{ {k: ours.get(k) for k in differ} } are used", RuntimeWarning, stacklevel=2)
        self._buckets.clear()
        self._sources.clear()
        self._loaded = {int(i): dict(b) for i, b in state["buckets"].items()}
        w, r = state["world_size"], state["rank"]
        self._loaded_where = None if w is None else (int(w), int(r))
        self._where, self._warned_where = None, False

    # ----- per bucket -----
    def _bucket_state(self, bucket: GradBucket) -> PowerSGDMemory:
        """The bucket's state: made on first sight (from the checkpoint, if one was loaded), then reused."""
        self._where = (bucket.world_size, bucket.rank)
        bs = self._buckets.get(bucket.index)
        if bs is not None and self._sources[bucket.index] is bucket.params:
            return bs
        plan = make_plan(bucket.params, self.rank, self.min_compression_rate)
        if bs is not None and bs.plan.layout == plan.layout:
            bs.plan = plan  # the same params, laid out anew (set_grad_scale rebuilds the buckets)
        elif bs is not None:
            warnings.warn(f"PowerSGD bucket {bucket.index}: its params changed (another DDP on this state?); its "
                          f"Q and error restart", RuntimeWarning, stacklevel=3)
            bs = PowerSGDMemory(plan, bs.step)
        else:
            bs = self._adopt(bucket, plan)
        self._buckets[bucket.index], self._sources[bucket.index] = bs, bucket.params
        return bs

    def _adopt(self, bucket: GradBucket, plan: Plan) -> PowerSGDMemory:
        """A new bucket state, from the loaded checkpoint's entry for this bucket where it fits (class docstring)."""
        saved = self._loaded.pop(bucket.index, None)
        if saved is None:
            return PowerSGDMemory(plan)
        bs = PowerSGDMemory(plan, int(saved["step"]))
        if [list(x) for x in saved["layout"]] != plan.layout:
            warnings.warn(f"PowerSGD bucket {bucket.index}: its compressed params differ from the checkpoint's "
                          f"(another model, --bucket_size or --powersgd_rank); its Q and error restart",
                          RuntimeWarning, stacklevel=4)
            return bs
        dev = bucket.grad_data.device
        if saved["q"] is not None and self.warm_start:
            bs.q = _to_device(saved["q"], dev)
        if saved["error"] is None or not self.use_error_feedback:
            return bs
        if self._loaded_where == (bucket.world_size, bucket.rank):
            bs.error = _to_device(saved["error"], dev)
        elif not self._warned_where:
            self._warned_where = True
            w, r = self._loaded_where or (None, None)
            warnings.warn(f"PowerSGD error feedback restarts at zero: the checkpoint's error buffers are rank {r}'s "
                          f"of {w}, this is rank {bucket.rank} of {bucket.world_size} (Q and steps are kept)",
                          RuntimeWarning, stacklevel=4)
        return bs

    def _record(self, bucket: GradBucket, plan: Plan | None) -> None:
        """Bytes this bucket sends this step: all of it (plan None) or P, Q and U in fp32."""
        full = bucket.numel * bucket.grad_data.element_size()
        self._sent[bucket.index] = (full if plan is None else plan.sent_elements * _FP32_BYTES, full)

    def _after_previous(self, device: torch.device, start) -> torch.futures.Future:
        """Run start(issued, result) once the previous bucket has issued its last collective; return result.

        `start` sets `issued` after its own last collective is issued, and `result` to the reduced grads.
        """
        result = torch.futures.Future(devices=[device]) if device.type == "cuda" else torch.futures.Future()
        issued = torch.futures.Future()
        previous, self._issued = self._issued, issued

        def begin(f: torch.futures.Future) -> None:
            f.value()  # a failure earlier in the chain fails this bucket too
            start(issued, result)

        previous.then(_guarded(begin, issued, result))
        return result


# ---------------------------------------------------------------------------------------------- the hook
def _guarded(fn, *outs: torch.futures.Future):
    """A future callback running fn; an exception goes to every future in outs not yet set, so that a failure
    reaches whoever waits (the DDP, the next bucket) instead of vanishing on a callback thread."""
    def callback(f: torch.futures.Future) -> None:
        try:
            fn(f)
        except BaseException as e:  # noqa: BLE001 - handed on, not swallowed
            for out in outs:
                if not out.done():
                    out.set_exception(e)
    return callback


@contextlib.contextmanager
def _on_stream(stream):
    """Run the block on `stream` (the DDP's comm stream; None on the CPU), whichever stream is current.

    Inside a future callback the current stream is one of torch's pool that waited for the collective: the comm
    stream waits for it, runs the block, and the callback's stream then waits for the comm stream, so the
    events the callback's future records cover the block's kernels.
    """
    here = torch.cuda.current_stream(stream.device) if stream is not None else None
    if here is None or here == stream:
        yield
        return
    stream.wait_stream(here)
    with torch.cuda.stream(stream):
        yield
    here.wait_stream(stream)


def _all_reduce(t: torch.Tensor, group) -> torch.futures.Future:
    return work_future(dist.all_reduce(t, group=group, async_op=True))


def _run_plain(bucket: GradBucket, stream, issued: torch.futures.Future, result: torch.futures.Future) -> None:
    """Step 0: the default all-reduce, in the chain's order."""
    with _on_stream(stream):
        fut = allreduce_hook(_EXACT, bucket)
    fut.then(_guarded(lambda f: result.set_result(f.value()), result))
    issued.set_result(None)


def _run_compressed(work: _Compression, stream, issued: torch.futures.Future, result: torch.futures.Future) -> None:
    """Steps 1–6 as a chain of callbacks, one per collective (module docstring)."""
    group = work.bucket.group

    def after_p(f: torch.futures.Future) -> None:
        f.value()
        with _on_stream(stream):
            fut_q = _all_reduce(work.project_back(), group)
        fut_q.then(_guarded(after_q, result))
        issued.set_result(None)

    def after_q(f: torch.futures.Future) -> None:
        f.value()
        with _on_stream(stream):
            grads = work.decompress()
        result.set_result(grads)

    with _on_stream(stream):
        fut_p = _all_reduce(work.project(), group)
    fut_p.then(_guarded(after_p, issued, result))


def powersgd_hook(state: PowerSGDState, bucket: GradBucket) -> torch.futures.Future:
    """Reduce bucket.grad_data in place with PowerSGD (module docstring, steps 0–6); the future holds grad_data.

    Every rank gets the whole decompressed bucket, so ZeRO-1 (which reads only bucket.shard_range()) works too.
    """
    if bucket.group is None or bucket.world_size == 1:
        state._record(bucket, None)
        return allreduce_hook(_EXACT, bucket)
    bs = state._bucket_state(bucket)
    compressed = bool(bs.plan.groups) and bs.step >= state.start_iter
    work = _Compression(state, bs, bucket) if compressed else None
    bs.step += 1
    state._record(bucket, bs.plan if compressed else None)
    device = bucket.grad_data.device
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None

    def start(issued: torch.futures.Future, result: torch.futures.Future) -> None:
        if work is None:
            _run_plain(bucket, stream, issued, result)
        else:
            _run_compressed(work, stream, issued, result)

    return state._after_previous(device, start)
