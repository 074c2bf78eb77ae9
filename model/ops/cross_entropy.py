"""Fused linear + cross-entropy: the LM head and the loss in token chunks; (N x V) logits never exist at once.

fused_linear_cross_entropy(hidden (N,d), weight (V,d), targets (N,), bias=None, ignore_index=-100,
reduction="mean"|"sum", chunk_size=4096, impl) -> fp32 scalar. Mean is over targets != ignore_index (0 if none).

Algorithm (forward computes the gradients too, so backward only scales them):
1. scale = 1/max(#valid, 1) for "mean", 1 for "sum" (a device tensor: no host sync).
2. For each chunk of C tokens:
   a. logits = h_c @ W^T (+ b) with torch.mm into one reused (C, V) buffer in the input dtype;
   b. per row: a Triton program (or the torch path) computes lse = logsumexp(logits) with an online max/sum
      over V in blocks, loss = lse - logits[target], and overwrites the row in place with
      scale * (softmax - onehot(target)) (zeros for ignored rows);
   c. grad_h[c] = dlogits @ W; grad_W (+)= dlogits^T @ h_c (accumulated by addmm in W's dtype);
      grad_b += column sums of dlogits (fp32).
3. loss = sum(row losses) * scale. Backward multiplies the stored grads by grad_output in place (scale_).
Peak extra memory: one (C, V) chunk + grad_h + grad_W, instead of (N, V) logits in fp32 plus their grad.
impl "triton" and "torch" share the chunking; they differ in step 2b and in the kernel that does step 3's
in-place multiply.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional: without triton only the torch path is available
    import triton.language as tl
except ImportError:  # pragma: no cover
    tl = None

from model.ops._triton_utils import LazyKernel, apply_eager, cdiv, check_float, next_power_of_2, resolve_impl

REDUCTIONS = ("mean", "sum")
MAX_BLOCK_V = 4096  # vocab columns per step of the row sweep (registers: fp32 x BLOCK_V per program)


def linear_cross_entropy_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Unfused reference: full logits (input dtype), fp32 cross-entropy; mean over non-ignored targets."""
    logits = F.linear(hidden, weight, bias).float()
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    if reduction == "mean":
        loss = loss / (targets != ignore_index).sum().clamp(min=1)
    return loss


def _ce_rows_kernel(
    LOGITS, TARGETS, LOSS, SCALE, n_cols, stride_row, ignore_index,
    COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # One program per row. Steps: 1. online max / sum-exp over V in BLOCK_V pieces; 2. loss = lse - x[target]
    # (0 for ignored rows); 3. if COMPUTE_GRAD, second sweep writing scale*(softmax - onehot) over the logits.
    row = tl.program_id(0).to(tl.int64)
    base = LOGITS + row * stride_row
    target = tl.load(TARGETS + row)
    valid = target != ignore_index
    in_range = valid & (target >= 0) & (target < n_cols)
    safe_target = tl.where(in_range, target, 0)
    m = float("-inf")
    d = 0.0
    for start in range(0, n_cols, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(d)
    x_target = tl.load(base + safe_target).to(tl.float32)
    loss = tl.where(valid, lse - x_target, 0.0)
    tl.store(LOSS + row, loss)
    if COMPUTE_GRAD:
        scale = tl.load(SCALE).to(tl.float32)
        row_scale = tl.where(valid, scale, 0.0)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            cmask = cols < n_cols
            x = tl.load(base + cols, mask=cmask, other=0.0).to(tl.float32)
            p = tl.exp(x - lse)
            g = (p - tl.where(cols == safe_target, 1.0, 0.0)) * row_scale
            tl.store(base + cols, g.to(LOGITS.dtype.element_ty), mask=cmask)


def _scale_kernel(X, G, n, BLOCK: tl.constexpr):
    # x *= g in place: the product in fp32, one rounding to X's dtype.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G).to(tl.float32)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(X + offs, (x * g).to(X.dtype.element_ty), mask=mask)


_ce_rows = LazyKernel(_ce_rows_kernel)
_scale = LazyKernel(_scale_kernel)
SCALE_BLOCK = 4096


def scale_(t: torch.Tensor, g: torch.Tensor, use_triton: bool) -> None:
    """t *= g in place for a 0-dim fp32 tensor g: each element times g in fp32, rounded once to t's dtype.

    Why a kernel: on CUDA, Tensor.mul_ by a 0-dim fp32 tensor on a bf16 tensor takes torch's non-vectorized
    dynamic-casting loop (0.69 ms per step for grad_h and grad_w at the 1.25B shape on an H100, about 4x the
    memory time; the kernel takes 0.22 ms), and torch._foreach_mul_ falls back to that same loop for a scalar
    tensor of another dtype. The torch path (CPU, non-contiguous) computes the same fp32 product.
    """
    if not use_triton or not t.is_contiguous():
        t.mul_(g)
        return
    n = t.numel()
    if n:
        _scale[(cdiv(n, SCALE_BLOCK),)](t, g, n, BLOCK=SCALE_BLOCK, num_warps=8)


def _rows_triton(logits, targets, loss_out, scale, ignore_index, compute_grad) -> None:
    n_rows, n_cols = logits.shape
    if n_rows == 0:
        return
    block_v = min(MAX_BLOCK_V, next_power_of_2(n_cols))
    _ce_rows[(n_rows,)](
        logits, targets, loss_out, scale, n_cols, logits.stride(0), int(ignore_index),
        COMPUTE_GRAD=compute_grad, BLOCK_V=block_v, num_warps=8 if block_v >= 2048 else 4,
    )


def _rows_torch(logits, targets, loss_out, scale, ignore_index, compute_grad) -> None:
    valid = targets != ignore_index
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    lf = logits.float()
    lse = torch.logsumexp(lf, dim=-1)
    x_target = lf.gather(1, safe[:, None]).squeeze(1)
    loss_out.copy_(torch.where(valid, lse - x_target, torch.zeros_like(lse)))
    if compute_grad:
        grad = torch.exp(lf - lse[:, None])
        grad.scatter_add_(1, safe[:, None], -torch.ones_like(lse)[:, None])
        grad.mul_((scale * valid.float())[:, None])
        logits.copy_(grad)


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Chunked LM head + cross-entropy; gradients are computed in forward and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, bias, ignore_index, reduction, chunk_size, use_triton, grad_enabled):
        # the chunked mm / in-place addmm_ pairs must keep the inputs' dtype: an enclosing autocast would make
        # the first product bf16 and the in-place accumulation into it fail (callers cast the inputs instead)
        with torch.autocast(hidden.device.type, enabled=False):
            return FusedLinearCrossEntropyFunction._forward(
                ctx, hidden, weight, targets, bias, ignore_index, reduction, chunk_size, use_triton, grad_enabled)

    @staticmethod
    def _forward(ctx, hidden, weight, targets, bias, ignore_index, reduction, chunk_size, use_triton, grad_enabled):
        n_tok, vocab = hidden.shape[0], weight.shape[0]
        # grad mode is off inside forward; the caller's mode decides whether the grads are worth computing
        need_h, need_w, need_b = (grad_enabled and ctx.needs_input_grad[i] for i in (0, 1, 3))
        compute_grad = need_h or need_w or need_b
        valid = targets != ignore_index
        if reduction == "mean":
            scale = 1.0 / valid.sum().clamp(min=1).to(torch.float32)
        else:
            scale = torch.ones((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w and n_tok == 0 else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=hidden.device) if need_b else None
        loss_rows = torch.empty(n_tok, dtype=torch.float32, device=hidden.device)
        rows_fn = _rows_triton if use_triton else _rows_torch
        buf = torch.empty((min(chunk_size, n_tok), vocab), dtype=hidden.dtype, device=hidden.device)
        for start in range(0, n_tok, chunk_size):
            end = min(start + chunk_size, n_tok)
            h_c, logits = hidden[start:end], buf[: end - start]
            torch.mm(h_c, weight.t(), out=logits)
            if bias is not None:
                logits.add_(bias)
            rows_fn(logits, targets[start:end], loss_rows[start:end], scale, ignore_index, compute_grad)
            if not compute_grad:
                continue
            if need_h:
                torch.mm(logits, weight, out=grad_h[start:end])
            if need_w:
                if grad_w is None:
                    grad_w = torch.mm(logits.t(), h_c)
                else:
                    grad_w.addmm_(logits.t(), h_c)
            if need_b:
                grad_b += logits.float().sum(dim=0)
        ctx.grads = (grad_h, grad_w, grad_b.to(bias.dtype) if need_b else None)
        ctx.use_triton = use_triton
        return loss_rows.sum() * scale

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("fused_linear_cross_entropy: backward called twice (retain_graph is not supported)")
        grad_h, grad_w, grad_b = ctx.grads
        ctx.grads = None
        g = grad_out.to(torch.float32)  # a 0-dim tensor: multiplying keeps each grad's dtype
        for t in (grad_h, grad_w, grad_b):
            if t is not None:
                scale_(t, g, ctx.use_triton)
        return grad_h, grad_w, None, grad_b, None, None, None, None, None


def _check_ce_args(hidden, weight, targets, bias, reduction, chunk_size) -> None:
    check_float("hidden", hidden)
    check_float("weight", weight)
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden must be (N, d) and weight (V, d); got hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}"
        )
    if targets.shape != (hidden.shape[0],) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"targets must be an int64 tensor of shape ({hidden.shape[0]},); got {targets.dtype} {tuple(targets.shape)}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},); got {tuple(bias.shape)}")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {REDUCTIONS}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1; fix --cross_entropy_chunk_size")


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int = 4096,
    impl: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of (hidden @ weight^T + bias) against targets, chunked over tokens; fp32 scalar."""
    _check_ce_args(hidden, weight, targets, bias, reduction, chunk_size)
    use_triton = resolve_impl(impl, hidden.device) == "triton"
    return apply_eager(FusedLinearCrossEntropyFunction, 
        hidden.contiguous(), weight, targets.contiguous(), bias, int(ignore_index), reduction, int(chunk_size),
        use_triton, torch.is_grad_enabled(),
    )


def _chunk_token_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        ignore_index: int) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()
    picked = logits.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1)
    return torch.where(targets == ignore_index, 0.0, torch.logsumexp(logits, dim=-1) - picked)


def linear_cross_entropy_per_token(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100, chunk_size: int = 4096) -> torch.Tensor:
    """(N,) fp32 per-token cross-entropy of (hidden @ weight^T) against targets, 0 where ignored.

    For losses that weigh tokens after the forward (DPO's per-sequence log-probs): the upstream gradient of
    each token is only known in backward, so the fused kernel above, which computes its gradients in the
    forward, cannot serve. Each chunk of C tokens runs under activation checkpointing instead: only one
    (C, V) block of logits lives at a time, in forward and again when backward recomputes it.
    """
    _check_ce_args(hidden, weight, targets, None, "sum", chunk_size)
    from torch.utils.checkpoint import checkpoint

    parts = []
    for s in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[s:s + chunk_size], targets[s:s + chunk_size]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_token_losses, h, weight, t, ignore_index, use_reentrant=False))
        else:
            parts.append(_chunk_token_losses(h, weight, t, ignore_index))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
