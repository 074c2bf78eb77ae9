"""torchtitan's Llama3 as an off-the-shelf peer for bench/train_step.py (the `torchtitan` case).

What is torchtitan's here: the model (torchtitan.models.llama3: Llama3Model.Config with the per-layer configs of
its own `_build_llama3_layers`, so its fused wqkv, depth-scaled init, ComplexRoPE, RMSNorm and SwiGLU), its
init (meta build, to_empty, init_weights, as its Trainer does), its activation checkpointing
(ActivationCheckpointing.apply: the SelectiveAC that its Trainer.Config and llama3 recipes default to), its
compile path (torchtitan.distributed.compile.apply_compile: torch.compile per TransformerBlock, fullgraph,
after AC, as parallelize_llama orders them) and its loss (ChunkedLossWrapper around CrossEntropyLoss, the
llama3 recipes' default: lm_head applied per sequence chunk, sum CE over the global valid-token count).
What is ours: the step loop in bench/train_step.py, and the choices listed under OPTIONS.

Options (the case name `torchtitan:key=value;key=value`):
- attn=sdpa (default) | flex. torchtitan 0.3.0's language-model recipes use FlexAttention (block-causal masks
  from per-document positions); its get_attention_config refuses "sdpa" for them because its dataloader always
  emits positions. Our batches are whole windows (no document boundaries, as for every other case), so plain
  causal SDPA computes the same attention; we put torchtitan's own ScaledDotProductAttention module (cuDNN,
  then flash, then math, by priority) in the layer configs. attn=flex runs its default FlexAttention with the
  BlockMask its Decoder.get_attention_masks builds from positions 0..T-1 (plain causal), once per micro-batch.
- ac=selective (default: Trainer.Config's and every llama3 recipe's) | full | none.
- compile=true (default; torchtitan's own default is off: --compile.enable) | false. The loss is compiled too
  when compile is on (CompileConfig.components defaults to model and loss).
- loss=chunked (default, num_chunks 8) | ce (CrossEntropyLoss over the full logits).
Not used, as for every other case here: FSDP2 (its Trainer wraps even one GPU in fully_shard, bf16 params and
fp32 reduce; here fp32 params under bf16 autocast, as the HF peers run), CUDA graphs (its Trainer captures
forward+backward by default: --training.disable_cuda_graphs turns that off), float8 (off in its 8B and 70B recipes).
attn=flex has no backward on the CPU, so the dry run skips it.
"""
from __future__ import annotations

OPTIONS = {"attn": ("sdpa", "flex"), "ac": ("selective", "full", "none"), "compile": ("true", "false"),
           "loss": ("chunked", "ce")}
DEFAULTS = {"attn": "sdpa", "ac": "selective", "compile": "true", "loss": "chunked"}


def parse_options(text: str) -> dict:
    """`key=value;key=value` -> DEFAULTS updated, every key and value checked against OPTIONS."""
    out = dict(DEFAULTS)
    for item in filter(None, (t.strip() for t in text.split(";"))):
        key, _, value = item.partition("=")
        if value.lower() not in OPTIONS.get(key, ()):
            raise ValueError(f"torchtitan option {item!r}: choose from {OPTIONS}")
        out[key] = value.lower()
    return out


def llama3_config(shape: dict, attn: str):
    """torchtitan's Llama3Model.Config at our shape, built as its flavor factories (`_1b`, ...) build theirs.

    The FFN width is set directly (FeedForward.Config takes the final hidden dim): exact for any shape, where
    the multiplier route is not (compute_ffn_hidden_dim(2048, multiple_of=256) happens to give the seed's 5632,
    but no setting gives DRY_SHAPE's 128 from 64). RoPE without llama3.1 scaling, as z2all and HF run at our
    shape; theta and eps from the shape. A tied embedding skips its own init, as torchtitan's `_1b` does.
    """
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.models.llama3 import (_EMBEDDING_INIT, _EMBEDDING_SKIP_INIT, _NORM_INIT,
                                          _build_llama3_layers, _output_linear_init)
    from torchtitan.models.llama3.model import Llama3Model

    dim, vocab, heads, tied = shape["hidden_dim"], shape["vocab_size"], shape["n_heads"], shape["tie_word_embeddings"]
    rope = ComplexRoPE.Config(dim=dim // heads, max_seq_len=shape["max_seq_len"], theta=shape["rope_theta"])
    layers = _build_llama3_layers(n_layers=shape["n_layers"], dim=dim, n_heads=heads,
                                  n_kv_heads=shape["n_kv_heads"], hidden_dim=shape["intermediate_size"],
                                  rope=rope, fuse_qkv=True, attn_backend="flex")
    for layer in layers:
        layer.attention_norm.eps = layer.ffn_norm.eps = shape["rms_norm_eps"]
        if attn == "sdpa":  # see the module docstring: torchtitan's module, bypassing its LM-backend check
            layer.attention.inner_attention = ScaledDotProductAttention.Config()
    return Llama3Model.Config(
        dim=dim, vocab_size=vocab, enable_weight_tying=tied,
        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim,
                                        param_init=_EMBEDDING_SKIP_INIT if tied else _EMBEDDING_INIT),
        norm=RMSNorm.Config(normalized_shape=dim, eps=shape["rms_norm_eps"], param_init=_NORM_INIT),
        lm_head=Linear.Config(in_features=dim, out_features=vocab, param_init=_output_linear_init(dim)),
        layers=layers)


def _build_model(cfg, device, opts: dict, dry_run: bool):
    """Meta build, AC, compile, materialize, init: parallelize_llama's order without its FSDP step (which
    needs a device mesh)."""
    import torch
    from torchtitan.config import CompileConfig, ParallelismConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC
    from torchtitan.distributed.compile import apply_compile

    with torch.device("meta"):
        model = cfg.build()
    if opts["ac"] != "none":
        (SelectiveAC.Config() if opts["ac"] == "selective" else FullAC.Config()).build(dump_folder="").apply(model)
    # aot_eager on the CPU dry run: dynamo traces every block fullgraph as on the GPU, without inductor's C++
    compile_cfg = CompileConfig(enable=opts["compile"] == "true", backend="aot_eager" if dry_run else "inductor")
    if compile_cfg.enable:
        apply_compile(model, compile_config=compile_cfg,
                      parallel_dims=ParallelDims.from_config(ParallelismConfig(), world_size=1))
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()
    return model, compile_cfg


def build_torchtitan(shape: dict, device, lr: float, dry_run: bool, options: str = ""):
    """(micro_loss(x, y, n_tokens) -> loss, model, optimizer, flops_per_token).

    micro_loss is one micro-batch's forward and loss, already divided by n_tokens (torchtitan's
    global_valid_tokens: every token of the optimizer step's micro-batches), so summing its backward over ga
    micro-batches gives the mean loss's gradient, as loss / ga does for the HF peers. With the chunked loss the
    lm_head's backward runs inside the call (torchtitan's design); loss.backward() then runs the decoder's.
    """
    import torch
    from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
    from torchtitan.distributed.utils import set_spmd_backend

    opts = parse_options(options)
    set_spmd_backend("spmd_types")  # as its Trainer does (ParallelismConfig's default backend)
    cfg = llama3_config(shape, opts["attn"])
    model, compile_cfg = _build_model(cfg, device, opts, dry_run)
    ce = CrossEntropyLoss.Config(global_vocab_size=shape["vocab_size"])
    loss_fn = (ChunkedLossWrapper.Config(loss_fn=ce) if opts["loss"] == "chunked" else ce).build(
        compile_config=compile_cfg)
    if opts["loss"] == "chunked":
        loss_fn.set_lm_head(model.lm_head)
        model._skip_lm_head = True  # the Trainer's wiring: forward returns hidden states
    positions = torch.arange(shape["max_seq_len"], device=device)

    def micro_loss(x, y, n_tokens):
        kwargs = {}
        if opts["attn"] == "flex":  # the Trainer's post_dataloading_process: a mask per micro-batch
            pos = positions.expand(x.shape[0], -1)
            kwargs = {"positions": pos, "attention_masks": model.get_attention_masks(positions=pos)}
        return loss_fn(model(x, **kwargs), y, n_tokens)[0]

    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                            fused=device.type == "cuda")  # = torchtitan's default_adamw, implementation "fused"
    return micro_loss, model, opt, flops_per_token(model, shape)


def flops_per_token(model, shape: dict) -> int:
    """bench/mfu.py build_hf's convention: 6 * (params - input embedding, + lm_head if tied) + 12 * L * d * T."""
    n = sum(p.numel() for p in model.parameters()) - model.tok_embeddings.weight.numel()
    if shape["tie_word_embeddings"]:
        n += model.lm_head.weight.numel()
    return 6 * n + 12 * shape["n_layers"] * shape["hidden_dim"] * shape["max_seq_len"]


def sdpa_priority():
    """The SDPA backend priority torchtitan's ScaledDotProductAttention runs under (a context manager)."""
    from torch.nn.attention import sdpa_kernel
    from torchtitan.models.common.attention import ScaledDotProductAttention

    backends = ScaledDotProductAttention(ScaledDotProductAttention.Config()).sdpa_backends
    return sdpa_kernel(backends, set_priority=True)
