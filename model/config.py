"""Z2allConfig: the shape and options of the Z2all decoder.

Every field is a flat, command-line settable key (``--hidden_dim=512``). Units are in the comments.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from model.ops.attention import ATTN_IMPLS, SDPA_BACKENDS  # the op owns its choices
from model.ops.fp8 import FP8_RECIPES

OP_IMPLS = ("auto", "triton", "torch")
ROPE_SCALING_TYPES = ("none", "linear", "dynamic")
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")
# The fields that define the parameter shapes: weights load only into a model with the same values.
SHAPE_KEYS = ("vocab_size", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "intermediate_size",
              "tie_word_embeddings", "attention_bias")
# What a model built from another run's weights takes from that run unless set: the shapes and what the weights
# were trained with (positions, RoPE, norm epsilon, residual precision).
# Marks the fields a tokenizer owns (the special ids): never a command-line key, never in exp_config.json.
TOKENIZER_OWNED = {"owner": "tokenizer"}
ARCH_KEYS = SHAPE_KEYS + ("multiple_of", "max_seq_len", "rope_theta", "rope_scaling_type", "rope_scaling_factor",
                          "rms_norm_eps", "residual_in_fp32")


@dataclass(frozen=True)
class Z2allConfig:
    """The model shape (defaults: the seed 1.25B shape) and the op choices."""

    vocab_size: int = 64320  # tokens; rounded up to a multiple of 64 by the tokenizer
    hidden_dim: int = 2048  # model width d
    n_layers: int = 22  # decoder blocks
    n_heads: int = 32  # query heads; head_dim = hidden_dim // n_heads
    n_kv_heads: int = 8  # key/value heads (GQA); 1 is MQA, n_heads is MHA
    intermediate_size: int = 0  # SwiGLU width; 0 = 8/3·hidden_dim rounded up to multiple_of
    multiple_of: int = 256  # rounding for the derived intermediate_size
    max_seq_len: int = 2048  # tokens per training window and the RoPE table length
    rope_theta: float = 10000.0  # RoPE base
    rope_scaling_type: str = "none"  # none | linear | dynamic (NTK)
    rope_scaling_factor: float = 1.0  # context extension factor for rope_scaling_type
    rms_norm_eps: float = 1e-5  # RMSNorm epsilon
    initializer_range: float = 0.02  # init std; output projections use std/sqrt(2·n_layers)
    tie_word_embeddings: bool = False  # share the embedding and LM head weights
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2 style; o has none)
    attention_dropout: float = 0.0  # dropout probability on attention weights
    residual_dropout: float = 0.0  # dropout probability before each residual add
    residual_in_fp32: bool = True  # keep the residual stream in fp32 when params are bf16/fp16
    # the tokenizer's special ids, recorded for generation and the HF export: not settings (no --key), the model
    # built for a run takes them from its tokenizer (model_config_for)
    bos_token_id: int = field(default=1, metadata=TOKENIZER_OWNED)
    eos_token_id: int = field(default=2, metadata=TOKENIZER_OWNED)
    pad_token_id: int = field(default=0, metadata=TOKENIZER_OWNED)
    # the end of an assistant turn in the tokenizer's chat format (<|im_end|> for ChatML, <|eot_id|> for Llama 3):
    # the HF export stops generation there as well as at EOS; -1: none recorded (a checkpoint from before it)
    eot_token_id: int = field(default=-1, metadata=TOKENIZER_OWNED)
    use_fused_rmsnorm: str = "auto"  # auto | triton | torch (auto: triton on CUDA, torch on CPU)
    use_fused_rope: str = "auto"  # auto | triton | torch
    use_fused_swiglu: str = "auto"  # auto | triton | torch
    use_fused_cross_entropy: str = "auto"  # auto | triton | torch (chunked linear+CE either way)
    attn_impl: str = "auto"  # auto | sdpa | flash_attn | flex | torch
    sdpa_backend: str = "auto"  # auto | cudnn | flash | efficient | math
    cross_entropy_chunk_size: int = 4096  # tokens per chunk of the fused linear cross-entropy
    activation_checkpointing: str = "none"  # none | full (rerun each block) | selective (recompute the SwiGLU output)
    fp8: str = "off"  # off | rowwise: FP8 (e4m3, row scales) GEMMs for qkv/o/gate_up/down in training; needs SM 8.9+
    debug_checks: bool = False  # host-syncing input checks on CUDA (always on for CPU)

    def __post_init__(self) -> None:
        # The one derived field, filled in at construction (the config is frozen afterwards): intermediate_size = 0
        # becomes 8/3·hidden_dim rounded up to multiple_of.
        if self.intermediate_size == 0 and self.multiple_of > 0:  # multiple_of <= 0 is left to validate()
            raw = int(8 * self.hidden_dim / 3)
            object.__setattr__(self, "intermediate_size", self.multiple_of * math.ceil(raw / self.multiple_of))

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.n_heads

    def validate(self) -> None:
        """Raise ValueError naming the clashing values and the flag that fixes them."""
        for name in ("vocab_size", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "multiple_of",
                     "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.hidden_dim % self.n_heads != 0:
            raise ValueError(
                f"hidden_dim={self.hidden_dim} is not divisible by n_heads={self.n_heads}; "
                f"choose --n_heads that divides --hidden_dim"
            )
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; "
                f"choose --n_kv_heads that divides --n_heads"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE; change --hidden_dim or --n_heads")
        choices = {
            "use_fused_rmsnorm": OP_IMPLS,
            "use_fused_rope": OP_IMPLS,
            "use_fused_swiglu": OP_IMPLS,
            "use_fused_cross_entropy": OP_IMPLS,
            "attn_impl": ATTN_IMPLS,
            "sdpa_backend": SDPA_BACKENDS,
            "rope_scaling_type": ROPE_SCALING_TYPES,
            "activation_checkpointing": ACTIVATION_CHECKPOINTING,
            "fp8": FP8_RECIPES,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"--{name}={value!r} is not one of {', '.join(allowed)}")
        for name in ("attention_dropout", "residual_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.fp8 != "off":
            self._check_fp8_widths()
        if self.attn_impl == "flex" and self.attention_dropout > 0:
            raise ValueError(f"--attn_impl=flex has no attention dropout, got --attention_dropout="
                             f"{self.attention_dropout}; use --attention_dropout=0 or --attn_impl=auto")

    def _check_fp8_widths(self) -> None:
        """FP8 GEMMs (torch._scaled_mm) need both dims of every weight to be multiples of 16."""
        widths = {"hidden_dim": self.hidden_dim, "intermediate_size": self.intermediate_size,
                  "(n_heads + 2*n_kv_heads) * head_dim": (self.n_heads + 2 * self.n_kv_heads) * self.head_dim}
        bad = {k: v for k, v in widths.items() if v % 16}
        if bad:
            shown = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise ValueError(f"--fp8={self.fp8} needs the linear layers' widths to be multiples of 16 (FP8 tensor-core "
                             f"GEMMs), got {shown}; change --hidden_dim/--intermediate_size/--n_heads, or --fp8=off")

    def shape_differences(self, saved: "Z2allConfig") -> dict[str, tuple]:
        """{key: (saved value, this value)} for every SHAPE_KEYS field where `saved` differs from this config."""
        return {k: (getattr(saved, k), getattr(self, k)) for k in SHAPE_KEYS if getattr(saved, k) != getattr(self, k)}

    def check_same_shape(self, saved: "Z2allConfig", where: str, fix: str) -> None:
        """Raise ValueError when weights saved with config `saved` do not fit this config's shapes.

        The message lists each differing key and ends with `fix`, which the caller words for its situation
        (the keys to set for --init_from, the --keys to drop for --resume); `{keys}` in it becomes the
        command-line settings that would match the saved shape.
        """
        diff = self.shape_differences(saved)
        if diff:
            clashes = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            keys = " ".join(f"--{k}={a}" for k, (a, _) in diff.items())
            raise ValueError(f"the model shape differs from the checkpoint {where} ({clashes}); {fix.format(keys=keys)}")

    def with_special_ids(self, bos: int, eos: int, pad: int, eot: int = -1) -> "Z2allConfig":
        """This config with a tokenizer's special ids (what a run's model records for generation and export)."""
        return dataclasses.replace(self, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, eot_token_id=eot)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Z2allConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
