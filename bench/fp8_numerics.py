"""How far each FP8 choice moves the numbers of a real training run: the evidence behind --fp8=rowwise's recipe.

    python bench/fp8_numerics.py [--data_dir=DIR] [--steps=300] [--hidden_dim=256] [--n_layers=4] [--seq=256]
                                 [--batch=8] [--device=cpu]
    python bench/fp8_numerics.py --steps=2 --hidden_dim=32 --n_layers=1 --seq=16 --batch=2     # a quick check

It needs no FP8 hardware: the FP8 GEMMs are emulated exactly (model/ops/fp8.py: e4m3 codes times power-of-two
scales, summed in fp32), so a CPU gives the same numbers a GPU would, up to the order of the sums.
1. Loss: a Z2all and its --fp8=rowwise twin start from the same weights and take the same batches (torch AdamW, fp32
   params); one line every --log_every steps with both losses, then the mean relative gap over the last quarter.
2. Each GEMM of the trained plain model under each choice: one batch's inputs, weights and output gradients of every
   decoder linear (hooks), and the normwise error against the exact fp32 product, averaged over the layers:
   - fwd x @ W^T:    e4m3 row-wise (the recipe), e4m3 tensor-wise, e5m2 row-wise;
   - dgrad dy @ W:   dy e4m3 row-wise (the recipe), dy e5m2 row-wise, dy e4m3 tensor-wise;
   - wgrad dy^T @ x: x's FP8 round trip in a bf16 GEMM (the recipe), x itself in bf16, e4m3 with row-wise
                     scales over the tokens (what _scaled_mm could run), the same with dy in e5m2.
Data: --data_dir (pretokenized shards, as train.py reads them) or, without it, a learnable synthetic stream (runs
of arithmetic sequences, as the tests use). One JSON line per record; the first records the setup.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from model import Z2allConfig, Z2allForCausalLM  # noqa: E402

LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
FORMATS = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}


def fake_quant(t: torch.Tensor, fmt: str, dim: int | None) -> torch.Tensor:
    """t rounded through an FP8 format with one power-of-two scale per slice along `dim` (None: one per tensor)."""
    dtype, top = FORMATS[fmt]
    amax = t.abs().amax() if dim is None else t.abs().amax(dim=dim, keepdim=True)
    scale = torch.exp2(torch.ceil(torch.log2(amax.clamp_min(2.0 ** -100) / top)))
    return (t / scale).clamp(-top, top).to(dtype).float() * scale


def _relerr(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def gemm_errors(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> dict[str, float]:
    """Section 2 for one linear: x (M, K), w (N, K), dy (M, N), all fp32."""
    bf = torch.bfloat16
    fwd, dgrad, wgrad = x @ w.t(), dy @ w, dy.t() @ x
    q = fake_quant
    return {
        "fwd/e4m3_rowwise": _relerr(q(x, "e4m3", 1) @ q(w, "e4m3", 1).t(), fwd),
        "fwd/e4m3_tensorwise": _relerr(q(x, "e4m3", None) @ q(w, "e4m3", None).t(), fwd),
        "fwd/e5m2_rowwise": _relerr(q(x, "e5m2", 1) @ q(w, "e5m2", 1).t(), fwd),
        "dgrad/e4m3_rowwise": _relerr(q(dy, "e4m3", 1) @ q(w, "e4m3", 0), dgrad),
        "dgrad/e5m2_rowwise": _relerr(q(dy, "e5m2", 1) @ q(w, "e4m3", 0), dgrad),
        "dgrad/e4m3_tensorwise": _relerr(q(dy, "e4m3", None) @ q(w, "e4m3", None), dgrad),
        "wgrad/bf16_of_fp8_x": _relerr((dy.to(bf).t() @ q(x, "e4m3", 1).to(bf)).float(), wgrad),
        "wgrad/bf16": _relerr((dy.to(bf).t() @ x.to(bf)).float(), wgrad),
        "wgrad/e4m3_rowwise_over_tokens": _relerr(q(dy, "e4m3", 0).t() @ q(x, "e4m3", 0), wgrad),
        "wgrad/e5m2_dy_rowwise_over_tokens": _relerr(q(dy, "e5m2", 0).t() @ q(x, "e4m3", 0), wgrad),
    }


def capture(model, x, y) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(input, weight, output grad) of every decoder linear for one batch, from the plain (bf16-path) forward."""
    seen, hooks = [], []
    for name, m in model.named_modules():
        if name.endswith(LINEARS):
            def fwd(mod, args, out, store=seen):  # noqa: ARG001
                inp = args[0]
                if name_is_down(mod):  # down takes gate_up: its GEMM input is the SwiGLU output
                    g, u = inp.float().chunk(2, dim=-1)
                    inp = torch.nn.functional.silu(g) * u
                rec = [inp.detach().reshape(-1, inp.shape[-1]).float(), mod.weight.detach().float(), None]
                store.append(rec)
                out.register_hook(lambda grad, rec=rec: rec.__setitem__(2, grad.reshape(-1, grad.shape[-1]).float()))
            hooks.append(m.register_forward_hook(fwd))
    model.train()
    model(x, targets=y).loss.backward()
    for h in hooks:
        h.remove()
    model.zero_grad(set_to_none=True)
    return [tuple(r) for r in seen]


def name_is_down(mod) -> bool:
    return type(mod).__name__ == "SwiGLUDownProj"


def batches(args, vocab: int):
    """An endless stream of (x, y) batches from the shards, or the synthetic stream."""
    g = torch.Generator().manual_seed(0)
    if args.data_dir:
        from dataset.config import DataConfig
        from dataset.pretrain import PretrainDataset

        ds = PretrainDataset(DataConfig(data_dir=args.data_dir), args.seq, vocab, log=lambda m: None)
        while True:
            idx = torch.randint(0, len(ds), (args.batch,), generator=g).tolist()
            rows = torch.stack([torch.as_tensor(ds[i][0]).long() for i in idx])
            yield rows[:, :-1], rows[:, 1:]
    while True:
        start = torch.randint(0, vocab, (args.batch, 1), generator=g)
        step = torch.randint(1, 7, (args.batch, 1), generator=g)
        rows = (start + step * torch.arange(args.seq + 1)) % vocab
        yield rows[:, :-1], rows[:, 1:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default="")
    p.add_argument("--vocab_size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--hidden_dim", type=int, default=256)
    p.add_argument("--n_layers", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--log_every", type=int, default=25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    shape = dict(vocab_size=args.vocab_size, hidden_dim=args.hidden_dim, n_layers=args.n_layers,
                 n_heads=max(1, args.hidden_dim // 64), n_kv_heads=max(1, args.hidden_dim // 128),
                 max_seq_len=args.seq, multiple_of=16, use_fused_rmsnorm="torch", use_fused_swiglu="torch")
    plain = Z2allForCausalLM(Z2allConfig(**shape)).to(args.device)
    fp8 = Z2allForCausalLM(Z2allConfig(**shape, fp8="rowwise")).to(args.device)
    fp8.load_state_dict(plain.state_dict())
    print(json.dumps({"setup": vars(args), "params": plain.num_params(non_embedding=False),
                      "torch": torch.__version__}))
    opts = [torch.optim.AdamW(m.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1) for m in (plain, fp8)]
    stream, gaps = batches(args, args.vocab_size), []
    for step in range(1, args.steps + 1):
        x, y = (t.to(args.device) for t in next(stream))
        losses = []
        for m, opt in zip((plain, fp8), opts):
            m.train()
            loss = m(x, targets=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        if step > args.steps * 3 // 4:
            gaps.append((losses[1] - losses[0]) / losses[0])
        if step % args.log_every == 0 or step == args.steps:
            print(json.dumps({"step": step, "loss_plain": round(losses[0], 5), "loss_fp8": round(losses[1], 5)}),
                  flush=True)
    print(json.dumps({"summary": "loss", "mean_rel_gap_last_quarter": round(sum(gaps) / max(1, len(gaps)), 5)}))
    x, y = (t.to(args.device) for t in next(stream))
    recs = capture(plain, x, y)
    errors: dict[str, list[float]] = {}
    for inp, w, dy in recs:
        for key, err in gemm_errors(inp, w, dy).items():
            errors.setdefault(key, []).append(err)
    for key, errs in errors.items():
        gemm, choice = key.split("/")
        print(json.dumps({"gemm": gemm, "choice": choice, "mean_rel_err": round(sum(errs) / len(errs), 5),
                          "max_rel_err": round(max(errs), 5), "layers": len(errs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
