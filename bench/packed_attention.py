"""Packed-row attention paths on one GPU: one layer's attention forward + backward on real packed micro-batches.

    python bench/packed_attention.py [--max_seq_len=2048] [--batch_size=8] [--steps=10] [--heads=32] [--kv_heads=8]
                                     [--head_dim=64]

Data: the demo SFT set's packed rows and padded micro-batches, exactly as bench/packing.py builds them. Shape:
the 1.25B model's attention (configs/z2all_1b.py: 32 query heads over 8 kv heads of 64). Cases, one JSON line
each, CUDA events around --steps calls after 3 warm-up calls, q/k/v bf16 with grads:
- flex: FlexAttention with the documents' block mask (built inside the timing, as train.py builds it once per
  forward; the mask build is also timed alone as flex_block_mask);
- sdpa_dense_mask: SDPA with the (B,1,T,T) block-diagonal mask (built once, outside the timing);
- padded_cudnn: SDPA causal (cuDNN) on the padded micro-batches of the same conversations, the baseline's path.
Reported: ms per micro-batch and per 1,000 real (non-pad) tokens.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.packing import demo_sft_dir, micro_batches  # noqa: E402
from dataset.sft import SFTDataset  # noqa: E402
from model.ops.attention import attention, flex_block_mask, packed_docs  # noqa: E402


def _time(fn, steps: int) -> float:
    """Mean ms of fn() over `steps` calls after 3 warm-up calls (CUDA events)."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def _qkv(b, t, args):
    g = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(b, t, h, args.head_dim, generator=g, device="cuda", dtype=torch.bfloat16).requires_grad_()
            for h in (args.heads, args.kv_heads, args.kv_heads)]


def _fwd_bwd(q, k, v, **kw):
    out = attention(q, k, v, **kw)
    out.backward(torch.ones_like(out))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max_seq_len", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv_heads", type=int, default=8)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ds = SFTDataset(demo_sft_dir(args.max_seq_len))
    print(json.dumps({"bench": "packed_attention", "device_name": torch.cuda.get_device_name(), "torch": torch.__version__,
                      **vars(args)}), flush=True)
    packed = micro_batches("packed", ds, args, 1)[0]
    padded_batches = micro_batches("padded", ds, args, 4)
    b, t = packed.input_ids.shape
    cu = packed.cu_seqlens.cuda()
    real = int((packed.input_ids != ds.pad_id).sum())
    q, k, v = _qkv(b, t, args)
    rows = {"flex_block_mask": _time(lambda: flex_block_mask(b, t, cu, True, "cuda"), args.steps)}
    rows["flex"] = _time(lambda: _fwd_bwd(q, k, v, packed=packed_docs(b, t, cu), impl="flex"), args.steps)
    dense = packed_docs(b, t, cu)
    dense.dense_mask(True, q.device)
    rows["sdpa_dense_mask"] = _time(lambda: _fwd_bwd(q, k, v, packed=dense, impl="sdpa"), args.steps)
    for name, ms in rows.items():
        print(json.dumps({"case": name, "ms": round(ms, 3), "real_tokens": real,
                          "ms_per_1k_real_tokens": round(1000 * ms / real, 4)}), flush=True)
    pad_ms, pad_real = 0.0, 0
    for batch in padded_batches:
        qp, kp, vp = _qkv(*batch.input_ids.shape, args)
        pad_ms += _time(lambda: _fwd_bwd(qp, kp, vp, impl="sdpa"), args.steps)
        pad_real += int((batch.input_ids != ds.pad_id).sum())
    print(json.dumps({"case": "padded_cudnn", "ms": round(pad_ms / len(padded_batches), 3),
                      "real_tokens": pad_real // len(padded_batches),
                      "ms_per_1k_real_tokens": round(1000 * pad_ms / pad_real, 4)}), flush=True)


if __name__ == "__main__":
    main()
