"""The typed config tree of a z2all run: parse, validate, derive, save and load.

The command line is ``python train.py [CONFIG.py] [--key=value ...]``. Keys are flat and unique across
the sections (seed-compatible: ``--batch_size=8``); each section is the dataclass its package defines
next to its code. The tree is built once, here, by :func:`build_config`:

1. Start from the dataclass defaults.
2. Apply one Python config file of assignments: the one given, or ``configs/default.py`` when none is
   given. With ``--resume``, the run's own ``<out_dir>/exp_config.py`` is applied instead.
3. Apply the ``--key=value`` overrides (they win over everything). ``--flag`` alone means True.
4. Parse each value against its field's type, reject unknown keys with the closest valid key, derive
   what can be derived, and check the cross-field rules, raising ValueError/TypeError that name the fix.

:func:`check_world_size` adds the rules that need the number of ranks, once it is known.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import pprint
import types
import typing
from dataclasses import dataclass, field

from dataset.config import DataConfig
from model.config import Z2allConfig
from optimizer.config import OptimizerConfig
from parallel.config import DDPConfig

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG_FILE = os.path.join(ROOT, "configs", "default.py")
EXP_CONFIG_NAME = "exp_config.py"
TASK_TYPES = ("pretrain",)  # sft and dpo register here when they land
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class TrainConfig:
    """The run itself: where it writes, how long it trains, how it logs and saves."""

    out_dir: str = "out/default"  # run directory: exp_config.py, ckpt/, metrics.jsonl, tb/, loss.png
    task_type: str = "pretrain"  # pretrain (sft and dpo arrive with their own issue)
    batch_size: int = 8  # sequences per micro-batch per rank
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step across ALL ranks (divided by world size)
    max_iters: int = 1000  # optimizer steps of the whole run
    eval_interval: int = 250  # optimizer steps between validation passes (0 disables)
    eval_iters: int = 20  # micro-batches per rank in one validation pass
    log_interval: int = 10  # optimizer steps between log lines
    save_interval: int = 500  # optimizer steps between checkpoints (one is always written at the end)
    keep_last_n: int = 2  # complete checkpoints kept (>= 2), besides best/
    seed: int = 1337  # seed of model init and dropout (data order uses data_seed)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # param dtype: auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    compile: bool = False  # torch.compile the model
    resume: bool = False  # continue the run in out_dir from its newest complete checkpoint
    init_from: str = ""  # start from the weights of a run dir or checkpoint dir (no optimizer state)
    tensorboard: bool = True  # also write TensorBoard scalars to <out_dir>/tb
    peak_tflops: float = 0.0  # device bf16 dense peak for MFU; 0 = known devices only (H100/H200, A100)
    sample_tokens: int = 64  # tokens generated as a sample at the end (0 disables)
    sample_prompt: str = "def "  # prompt of that sample


@dataclass
class ExperimentConfig:
    """The whole tree: one section per component."""

    train: TrainConfig = field(default_factory=TrainConfig)
    model: Z2allConfig = field(default_factory=Z2allConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)

    def sections(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def flat(self) -> dict[str, object]:
        """Every key with its value, as on the command line."""
        out = {}
        for section in self.sections().values():
            out.update(dataclasses.asdict(section))
        return out


# ---------------------------------------------------------------------------------------------
# key table and value parsing


def _key_table() -> dict[str, tuple[str, type]]:
    """Map each flat key to (section name, field type). Keys must be unique across sections."""
    table: dict[str, tuple[str, type]] = {}
    hints_cache = {}
    for sec in dataclasses.fields(ExperimentConfig):
        cls = sec.default_factory  # type: ignore[attr-defined]
        hints = hints_cache.setdefault(cls, typing.get_type_hints(cls))
        for f in dataclasses.fields(cls):
            assert f.name not in table, f"config key {f.name} is defined in two sections"
            table[f.name] = (sec.name, hints[f.name])
    return table


KEYS = _key_table()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _unknown_key_error(key: str, where: str) -> ValueError:
    close = difflib.get_close_matches(key, KEYS.keys(), n=1, cutoff=0.5)
    hint = f"; did you mean --{close[0]}?" if close else "; see configurator.py for the valid keys"
    return ValueError(f"unknown config key {key!r} {where}{hint}")


def parse_value(key: str, raw: str, typ: type) -> object:
    """Parse a command-line string into the field's type, or raise ValueError naming the key."""
    text = raw.strip()
    try:
        if typ is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if typ is int:
            try:
                return int(text, 0) if text.lower().startswith(("0x", "0b", "0o")) else int(text)
            except ValueError:
                as_float = float(text)  # accept 4e7 for large counts, but only if integral
                if not as_float.is_integer():
                    raise
                return int(as_float)
        if typ is float:
            return float(text)
        if typ is str:
            return raw
    except ValueError:
        pass
    raise ValueError(f"--{key}={raw!r} is not a valid {typ.__name__}; example: --{key}={_example(typ)}")


def _example(typ: type) -> str:
    return {bool: "true", int: "8", float: "3e-4", str: "text"}[typ]


def check_type(key: str, value: object, typ: type, where: str) -> object:
    """Type-check a value from a config file; ints are accepted for float fields."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise TypeError(
        f"config key {key!r} {where} must be {typ.__name__}, got {type(value).__name__} {value!r}"
    )


# ---------------------------------------------------------------------------------------------
# argv and config files


@dataclass
class ParsedArgs:
    config_file: str | None
    overrides: dict[str, object]  # already parsed to their field types


def parse_argv(argv: list[str]) -> ParsedArgs:
    """Split argv into at most one config file and typed ``--key=value`` overrides."""
    config_file = None
    overrides: dict[str, object] = {}
    for arg in argv:
        if not arg.startswith("--"):
            if config_file is not None:
                raise ValueError(f"two config files given ({config_file!r} and {arg!r}); pass one, then --key=value overrides")
            config_file = arg
            continue
        key, eq, raw = arg[2:].partition("=")
        if key not in KEYS:
            raise _unknown_key_error(key, "on the command line")
        _, typ = KEYS[key]
        if not eq:
            if typ is not bool:
                raise ValueError(f"--{key} needs a value: --{key}={_example(typ)}")
            raw = "true"
        overrides[key] = parse_value(key, raw, typ)
    return ParsedArgs(config_file, overrides)


def read_config_file(path: str) -> dict[str, object]:
    """Execute a config file of assignments and return its public, type-checked values."""
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist; give the path of a Python file of assignments (see configs/)")
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        namespace: dict[str, object] = {}
        exec(compile(source, path, "exec"), namespace)  # noqa: S102 - config files are the user's own code
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read config file {path!r}: {e}") from e
    except Exception as e:  # a syntax or runtime error inside the user's file
        raise ValueError(f"config file {path!r} failed to execute: {type(e).__name__}: {e}") from e
    values = {}
    for key, value in namespace.items():
        if key.startswith("_") or isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue
        if key not in KEYS:
            raise _unknown_key_error(key, f"in {path}")
        values[key] = check_type(key, value, KEYS[key][1], f"in {path}")
    return values


def apply_values(cfg: ExperimentConfig, values: dict[str, object]) -> None:
    for key, value in values.items():
        section, _ = KEYS[key]
        setattr(getattr(cfg, section), key, value)


# ---------------------------------------------------------------------------------------------
# building, deriving, validating


def build_config(argv: list[str]) -> ExperimentConfig:
    """Build the validated config tree from argv (see the module docstring for the order)."""
    args = parse_argv(argv)
    resume = bool(args.overrides.get("resume", False))
    cfg = ExperimentConfig()
    given: set[str] = set(args.overrides)
    if resume:
        if args.config_file is not None:
            raise ValueError(
                f"--resume takes its config from <out_dir>/{EXP_CONFIG_NAME}; drop {args.config_file!r} "
                f"and pass changes as --key=value"
            )
        if "out_dir" not in args.overrides:
            raise ValueError("--resume needs the run to continue: add --out_dir=RUN")
        run_config = os.path.join(str(args.overrides["out_dir"]), EXP_CONFIG_NAME)
        if not os.path.isfile(run_config):
            raise ValueError(
                f"cannot resume: {run_config} does not exist; check --out_dir, or start a new run without --resume"
            )
        file_values = read_config_file(run_config)
    else:
        file_values = read_config_file(args.config_file or DEFAULT_CONFIG_FILE)
    given |= set(file_values)
    apply_values(cfg, file_values)
    apply_values(cfg, args.overrides)
    cfg.train.resume = resume
    derive(cfg, given)
    validate(cfg)
    return cfg


def derive(cfg: ExperimentConfig, given: set[str]) -> None:
    """Fill in what follows from other keys (``given``: the keys a file or the command line set)."""
    m = cfg.model
    if "intermediate_size" not in given or m.intermediate_size == 0:
        # The default was derived from the default hidden_dim: derive it again from the final one.
        m.intermediate_size = 0
        m.__post_init__()
    if cfg.ddp.use_distributed_optimizer and cfg.ddp.comm_hook == "allreduce":
        # ZeRO-1 needs each rank's shard of the reduced grads only: reduce-scatter is the matching hook.
        cfg.ddp.comm_hook = "reduce_scatter"


def validate(cfg: ExperimentConfig) -> None:
    """Check every section and the rules that span sections."""
    for name, section in cfg.sections().items():
        if name != "train":
            section.validate()
    t = cfg.train
    _check_choice("task_type", t.task_type, TASK_TYPES)
    _check_choice("device", t.device, DEVICES)
    _check_choice("dtype", t.dtype, DTYPES)
    for name in ("batch_size", "gradient_accumulation_steps", "max_iters", "log_interval", "save_interval"):
        if getattr(t, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(t, name)}")
    if t.eval_interval < 0 or t.eval_iters < 0:
        raise ValueError("--eval_interval and --eval_iters must be >= 0 (0 disables evaluation)")
    if t.keep_last_n < 2:
        raise ValueError(f"--keep_last_n must be >= 2 so a torn newest checkpoint leaves one to resume from, got {t.keep_last_n}")
    if t.resume and t.init_from:
        raise ValueError("--resume and --init_from exclude each other: resume continues a run, init_from starts a new one")
    o, d = cfg.optim, cfg.ddp
    # The one home of the cross-field ddp/optim rules; the DDP and the optimizer only assert what they rely on.
    if d.comm_hook == "reduce_scatter" and not d.use_distributed_optimizer:
        raise ValueError("--comm_hook=reduce_scatter leaves each rank a shard of the grads: it needs "
                         "--use_distributed_optimizer; add it or use --comm_hook=allreduce")
    if d.use_distributed_optimizer and d.comm_hook != "reduce_scatter":
        raise ValueError(f"--use_distributed_optimizer needs --comm_hook=reduce_scatter, got "
                         f"--comm_hook={d.comm_hook}; drop --comm_hook (it then defaults to reduce_scatter)")
    if o.overlap_param_gather and not d.use_distributed_optimizer:
        raise ValueError("--overlap_param_gather needs --use_distributed_optimizer (there is no gather without "
                         "ZeRO-1); add --use_distributed_optimizer or drop --overlap_param_gather")
    if o.overlap_optim_step and o.grad_clip > 0:
        raise ValueError(f"--overlap_optim_step steps each bucket before the global grad norm is known, so it cannot "
                         f"clip: got --grad_clip={o.grad_clip}; set --grad_clip=0 or drop --overlap_optim_step")
    if o.overlap_optim_step and t.dtype == "float16":
        raise ValueError("--overlap_optim_step cannot skip a step on an inf/NaN found in a later bucket, so it cannot "
                         "run with fp16 loss scaling: use --dtype=bfloat16 or drop --overlap_optim_step")
    if o.loss_scale > 0 and t.dtype != "float16":
        raise ValueError(f"--loss_scale is for --dtype=float16 only (got --dtype={t.dtype}); drop --loss_scale")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"--{key}={value!r} is not one of {', '.join(allowed)}")


def check_world_size(cfg: ExperimentConfig, world_size: int) -> None:
    """The rules that need the number of data-parallel ranks."""
    ga = cfg.train.gradient_accumulation_steps
    if ga % world_size != 0:
        raise ValueError(
            f"--gradient_accumulation_steps={ga} counts micro-batches across all ranks and must be divisible by the "
            f"world size {world_size}; use --gradient_accumulation_steps={max(world_size, ga - ga % world_size)}"
        )


# ---------------------------------------------------------------------------------------------
# saving and reading exp_config.py


def format_config(cfg: ExperimentConfig) -> str:
    """Render the resolved tree as a config file of assignments, one block per section."""
    lines = ["# The resolved config of this run, written by configurator.py.", "# `train.py --resume --out_dir=RUN` reads it back."]
    for name, section in cfg.sections().items():
        lines.append("")
        lines.append(f"# [{name}] {type(section).__name__}")
        for key, value in dataclasses.asdict(section).items():
            if key == "resume":
                continue  # resuming is a property of the invocation, not of the run
            lines.append(f"{key} = {pprint.pformat(value)}")
    return "\n".join(lines) + "\n"


def save_config(cfg: ExperimentConfig, out_dir: str) -> str:
    """Write <out_dir>/exp_config.py atomically (temp file, then rename)."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, EXP_CONFIG_NAME)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(format_config(cfg))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
