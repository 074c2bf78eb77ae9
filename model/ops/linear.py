"""Linear layers whose weight gradient can go straight into an accumulated (main) gradient.

linear(x (..., in), weight (out, in), bias (out,) | None, sink) -> (..., out).

With sink=None this is F.linear, autograd and all. With a sink (the DDP passes one to the model, see
Z2allForCausalLM.set_weight_grad_sink), the backward hands (d_out, x) to the sink, which adds d_out^T @ x into
the weight's main gradient inside the GEMM itself (parallel/ddp.py: cuBLAS beta = 1, fp32 output from bf16
inputs), so the bf16 weight gradient is never materialised and no separate accumulate kernel reads and writes
the fp32 main gradient (Megatron calls this gradient-accumulation fusion). The sink may decline a weight (one
it does not manage), and the weight gradient is then returned through autograd as usual.

The sink protocol (duck-typed; the model does not import the parallel package):
    sink.accumulate_wgrad(weight, grad_out (N, out), inp (N, in)) -> bool
True means the sink added grad_out^T @ inp into the weight's accumulated gradient and did the bookkeeping
that a post-accumulate-grad hook would have done; the op then returns no gradient for the weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model.ops._triton_utils import apply_eager


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


class LinearSinkFunction(torch.autograd.Function):
    """F.linear whose backward offers the weight gradient to a sink first.

    Backward:
    1. d_x = d_out @ W (the same matmul F.linear's backward does);
    2. flatten d_out and x to rows; the sink adds d_out^T @ x into the main gradient, or declines and
       the weight gradient d_out^T @ x is returned;
    3. d_bias = column sums of d_out.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, sink):
        ctx.save_for_backward(x, weight)
        ctx.sink, ctx.has_bias = sink, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        x, weight = ctx.saved_tensors
        d_x = d_out.matmul(weight) if ctx.needs_input_grad[0] else None
        d_weight = d_bias = None
        d_rows, x_rows = _rows(d_out), _rows(x)
        if ctx.needs_input_grad[1] and not ctx.sink.accumulate_wgrad(weight, d_rows, x_rows):
            d_weight = d_rows.t().mm(x_rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            d_bias = d_rows.sum(0)
        return d_x, d_weight, d_bias, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, sink=None) -> torch.Tensor:
    """x @ weight.T (+ bias); with a sink, the weight gradient is offered to sink.accumulate_wgrad first."""
    if sink is None or not weight.requires_grad or not torch.is_grad_enabled():
        return F.linear(x, weight, bias)
    return apply_eager(LinearSinkFunction, x, weight, bias, sink)
