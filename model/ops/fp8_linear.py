"""The FP8 linear layer: forward and input-gradient GEMMs in e4m3 with row-wise scales, weight gradient in bf16.

fp8_linear(x, weight, bias, w8, sink) -> x @ weight.T (+ bias), x a tensor or an fp8.Fp8Input.

Per GEMM (ARCHITECTURE.md, "FP8 training", has the reasons and the measurements that are still to come):
- forward y = x @ W^T: x quantized by rows (along K; by the add+RMSNorm or SwiGLU kernel that produced it, or
  here for the attention output) and the weight's FP8 copy (`Fp8Weight.data`, rows along K);
- input gradient dx = dy @ W: dy quantized by rows here (along N), the weight's transposed FP8 copy
  (`Fp8Weight.data_t`, rows along N: FP8 tensor cores take only operands whose reduction dim is contiguous);
- weight gradient dW = dy^T @ x in bf16: its reduction runs over the tokens, where a row-wise scale would span
  every token of the micro-batch, and it keeps gradient-accumulation fusion (the sink adds it into the fp32 main
  grad inside the GEMM, model/ops/linear.py). x is what the forward kept: the FP8 copy dequantized (exact in
  bf16: power-of-two scales), or the bf16 input when that is alive anyway (the attention output, which the
  attention's backward keeps).

Weights are quantized once per optimizer step: `Fp8WeightCache` holds both FP8 copies of each weight and makes
them again when the weight has moved on, i.e. when its key (the step's generation, the storage pointer, the
autograd version) changed. The model bumps the generation when the weights may have changed
(Z2allForCausalLM.new_weight_step, called through the DDP's weights_changed() by the optimizer after its step and
by zero_grad_buffer when a step begins): the optimizer writes the params, ZeRO-1 all-gathers them and checkpoints
load them through kernels and collectives that autograd's version counter does not see. The first forward after that quantizes the weight, after ZeRO-1's pre-forward hook waited for its gather.
Within a step the copies stay fixed, so a checkpointed block's recompute reads the same FP8 weight as its forward.
The copies are plain attributes: never in a state dict, so checkpoints hold the bf16 weights only.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from model.ops._triton_utils import apply_eager, rows_2d
from model.ops.fp8 import (FAST_ACCUM_DGRAD, FAST_ACCUM_FWD, Fp8Input, dequantize_rows, dequantize_rows_ref, fp8_mm,
                           fp8_mm_ref, quantize_rows, quantize_rows_ref)


class Fp8Weight(NamedTuple):
    """The FP8 copies of one (N, K) weight."""

    data: torch.Tensor  # (N, K) e4m3, each row scaled along K: the forward's operand
    scale: torch.Tensor  # (N, 1) fp32
    data_t: torch.Tensor  # (K, N) e4m3, W^T with each row scaled along N: the input gradient's operand
    scale_t: torch.Tensor  # (K, 1) fp32


@torch.no_grad()
def quantize_weight(weight: torch.Tensor, impl: str = "auto") -> Fp8Weight:
    """Both FP8 copies of a weight (the transposed one from a bf16 transpose: once per step, at most 46 MB)."""
    w = weight.detach()
    data, scale = quantize_rows(w, impl)
    data_t, scale_t = quantize_rows(w.t().contiguous(), impl)
    return Fp8Weight(data, scale, data_t, scale_t)


class Fp8WeightCache:
    """The FP8 copies of the weights that one model's FP8 layers use, each made at most once per step."""

    def __init__(self, impl: str = "auto"):
        self.impl = impl
        self.generation = 0
        self._entries: dict[torch.nn.Parameter, tuple[tuple, Fp8Weight]] = {}

    def new_step(self) -> None:
        """The weights may have changed (an optimizer step, a load): every copy is remade at its next use."""
        self.generation += 1

    def clear(self) -> None:
        """Drop every copy now (the model moves to another device or dtype)."""
        self._entries.clear()

    @torch.compiler.disable
    def get(self, weight: torch.nn.Parameter) -> Fp8Weight:
        key = (self.generation, weight.data_ptr(), weight._version, weight.shape, weight.device)
        hit = self._entries.get(weight)
        if hit is not None and hit[0] == key:
            return hit[1]
        self._entries.pop(weight, None)  # free the old copies before making the new ones
        w8 = quantize_weight(weight, self.impl)
        self._entries[weight] = (key, w8)
        return w8

    def nbytes(self) -> int:
        """Bytes held by the copies (1 byte per element for each of the two layouts, plus the scales)."""
        return sum(t.numel() * t.element_size() for _, w8 in self._entries.values() for t in w8)


def fp8_dgrad(d_rows: torch.Tensor, w8: Fp8Weight, out_dtype: torch.dtype, impl: str) -> torch.Tensor:
    """dy (M, N) @ W -> (M, K): dy quantized by rows, W through its transposed copy."""
    dy_q, dy_scale = quantize_rows(d_rows, impl)
    return fp8_mm(dy_q, dy_scale, w8.data_t, w8.scale_t, out_dtype, fast_accum=FAST_ACCUM_DGRAD)


def weight_grad(weight: torch.Tensor, d_rows: torch.Tensor, x_rows: torch.Tensor, sink) -> torch.Tensor | None:
    """dy^T @ x in bf16: offered to the sink first (None when it took it into the main grad), else returned."""
    if sink is not None and sink.accumulate_wgrad(weight, d_rows, x_rows):
        return None
    return d_rows.t().mm(x_rows)


class Fp8LinearFunction(torch.autograd.Function):
    """y = x @ W^T (+ b) from x's and W's FP8 copies.

    Inputs: x is the real input when keep_x (its bf16 rows are saved for the weight gradient), else the
    Fp8Input's anchor (its FP8 rows x_q, x_scale are saved instead: half the bytes); w8 the weight's copies.
    Backward:
    1. flatten d_out to rows (M, N);
    2. dx = fp8_dgrad(d_out) in x's shape and dtype, when x needs a gradient;
    3. x's rows in bf16 (the saved input, or the FP8 rows dequantized) and dW = d_out^T @ x (weight_grad: the sink
       first);
    4. d_bias = column sums of d_out.
    """

    @staticmethod
    def forward(ctx, x, x_q, x_scale, weight, bias, w8: Fp8Weight, sink, keep_x: bool, impl: str):
        q2, s2 = x_q.reshape(-1, x_q.shape[-1]), x_scale.reshape(-1, 1)
        out = fp8_mm(q2, s2, w8.data, w8.scale, x.dtype, fast_accum=FAST_ACCUM_FWD)
        if bias is not None:
            out += bias  # _scaled_mm's row-wise mode is not given the bias: one pass, for attention_bias only
        ctx.save_for_backward(*((x,) if keep_x else (q2, s2)))
        # the weight itself is only the sink's key (the main grad it owns); the GEMMs read w8
        ctx.weight, ctx.w8, ctx.sink, ctx.keep_x, ctx.impl = weight, w8, sink, keep_x, impl
        ctx.x_shape, ctx.x_dtype, ctx.has_bias = x.shape, x.dtype, bias is not None
        return out.view(*x.shape[:-1], w8.data.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        d_rows = rows_2d(d_out)
        d_x = d_weight = d_bias = None
        if ctx.needs_input_grad[0]:
            d_x = fp8_dgrad(d_rows, ctx.w8, ctx.x_dtype, ctx.impl).view(ctx.x_shape)
        if ctx.needs_input_grad[3]:
            if ctx.keep_x:
                x_rows = rows_2d(ctx.saved_tensors[0])
            else:
                q2, s2 = ctx.saved_tensors
                x_rows = dequantize_rows(q2, s2, ctx.x_dtype, ctx.impl)
            d_weight = weight_grad(ctx.weight, d_rows, x_rows, ctx.sink)
        if ctx.has_bias and ctx.needs_input_grad[4]:
            d_bias = d_rows.sum(0)
        return d_x, None, None, d_weight, d_bias, None, None, None, None


def fp8_linear(x: torch.Tensor | Fp8Input, weight: torch.Tensor, bias: torch.Tensor | None, w8: Fp8Weight,
               sink=None, impl: str = "auto") -> torch.Tensor:
    """x @ weight.T (+ bias) through FP8 GEMMs (module docstring); w8 = weight's copies (Fp8WeightCache.get).

    x: an Fp8Input from a fused producer, or a tensor, quantized here (its rows must be contiguous, as the
    attention's output reshaped is). impl picks the quantize kernels: Triton on CUDA for "auto".
    """
    if isinstance(x, Fp8Input):
        return apply_eager(Fp8LinearFunction, x.anchor, x.data, x.scale, weight, bias, w8, sink, False, impl)
    with torch.no_grad():
        x_q, x_scale = quantize_rows(x, impl)
    return apply_eager(Fp8LinearFunction, x, x_q, x_scale, weight, bias, w8, sink, True, impl)


def fp8_linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, d_out: torch.Tensor,
                   keep_x: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The recipe's (y, d_x, d_weight, d_bias) for x (..., K), weight (N, K) and an output gradient, in plain
    PyTorch from the reference quantizer: what fp8_linear and its backward compute (keep_x: the weight gradient
    reads x itself, else its FP8 round trip)."""
    x2, d2, dtype = rows_2d(x.detach()), rows_2d(d_out), x.dtype
    xq, xs = quantize_rows_ref(x2)
    w = weight.detach()
    y = fp8_mm_ref(xq, xs, *quantize_rows_ref(w), dtype)
    if bias is not None:
        y = y + bias.detach()
    d_x = fp8_mm_ref(*quantize_rows_ref(d2), *quantize_rows_ref(w.t().contiguous()), dtype)
    x_w = x2 if keep_x else dequantize_rows_ref(xq, xs, dtype)
    d_bias = d2.sum(0) if bias is not None else None
    return y.view(*x.shape[:-1], w.shape[0]), d_x.view(x.shape), d2.t().mm(x_w), d_bias
