"""The typed config tree of a z2all run: parse, validate, derive, save and load.

The command line is ``python train.py [CONFIG.py] [--key=value ...]``. Keys are flat and unique across
the sections (seed-compatible: ``--batch_size=8``); each section is the dataclass its package defines
next to its code. The tree is built once, here, by :func:`build_config`:

1. Read one Python config file of assignments: the one given, or the task's recipe (``configs/default.py``,
   ``sft.py``, ``dpo.py``). With ``--resume``, the run's own ``<out_dir>/exp_config.json`` (data, not code).
2. The ``--key=value`` overrides win over it. ``--flag`` alone means True. Each value is parsed against its
   field's type; an unknown key fails with the closest valid key.
3. With ``--init_from``, the architecture keys the user did not set (on the command line or in a config file
   they named) come from that run; a recipe's shape never overrides the model being continued.
4. Each section is built once from the resolved values (the rest keep their defaults; each fills in its own
   derived fields), then frozen; the cross-field rules are checked, raising ValueError/TypeError that name the
   fix. Nothing changes the tree afterwards: what a run derives at run time (the tokenizer's special ids, the
   world size) it passes alongside, never by writing into the tree.

:func:`check_world_size` adds the rules that need the number of ranks, once it is known.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import math
import os
import textwrap
import types
import typing
from dataclasses import dataclass, field

from dataset.config import DataConfig
from model.config import Z2allConfig
from optimizer.config import OptimizerConfig
from parallel.config import DDPConfig
from tasks.config import PER_INVOCATION, FinetuneConfig, TrainConfig
from utils.disk_faults import writing
from utils.fileio import atomic_write_text
from utils.run_layout import EXP_CONFIG_NAME, LEGACY_EXP_CONFIG_NAME, ckpt_root

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG_FILE = os.path.join(ROOT, "configs", "default.py")
# the recipe a run gets without a config file, by --task_type
DEFAULT_CONFIG_FILES = {"pretrain": DEFAULT_CONFIG_FILE, "sft": os.path.join(ROOT, "configs", "sft.py"),
                        "dpo": os.path.join(ROOT, "configs", "dpo.py")}
# keys an older run's config may hold that no longer exist, and why they are dropped on --resume
REMOVED_KEYS = {"loss_reduction": "the task chooses how its loss is normalised (tasks/base.py)",
                **{k: "the tokenizer's, read from it" for k in ("bos_token_id", "eos_token_id", "pad_token_id")}}


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole tree: one section per component."""

    train: TrainConfig = field(default_factory=TrainConfig)
    model: Z2allConfig = field(default_factory=Z2allConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # where the model shape came from, for the start-up line (not a key: build_config fills it in)
    shape_source: str = field(default="the defaults (the seed 1.25B shape)", compare=False)

    def sections(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in _section_fields()}

    def flat(self) -> dict[str, object]:
        """Every key with its value, as on the command line."""
        return {f.name: getattr(section, f.name) for section in self.sections().values()
                for f in _key_fields(type(section))}


# ---------------------------------------------------------------------------------------------
# key table and value parsing


def _section_fields() -> list[dataclasses.Field]:
    """The fields of ExperimentConfig that are config sections (each a dataclass made by its default_factory)."""
    return [f for f in dataclasses.fields(ExperimentConfig) if f.default_factory is not dataclasses.MISSING]


def _key_table() -> dict[str, tuple[str, type]]:
    """Map each flat key to (section name, field type). Keys must be unique across sections."""
    table: dict[str, tuple[str, type]] = {}
    hints_cache = {}
    for sec in _section_fields():
        cls = sec.default_factory  # type: ignore[attr-defined]
        hints = hints_cache.setdefault(cls, typing.get_type_hints(cls))
        for f in _key_fields(cls):
            assert f.name not in table, f"config key {f.name} is defined in two sections"
            table[f.name] = (sec.name, hints[f.name])
    return table


def _key_fields(cls) -> list[dataclasses.Field]:
    """A section's fields that are keys: all but those a tokenizer owns (Z2allConfig's special ids)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("owner") != "tokenizer"]


KEYS = _key_table()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _field_comments(cls) -> dict[str, tuple[str, str]]:
    """{field: (note, meaning)} from a config dataclass's source, the one place each key is explained: the meaning
    is the comment after the field; the note, the comment lines just above it (a detail, or a group's header)."""
    import inspect

    out, pending = {}, []
    for line in inspect.getsource(cls).splitlines():
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("# "))  # a comment line above a field belongs to it
            continue
        name, colon, rest = text.partition(":")
        if colon and name.isidentifier() and "=" in rest:
            out[name] = (" ".join(pending), rest.split("#", 1)[1].strip() if "#" in rest else "")
        pending = []
    return out


def help_text() -> str:
    """`train.py --help`: every key by section, with its type, its declared default, the value `python train.py`
    runs with where that differs (the default recipe's, or derived from it), and its meaning (all read from the
    code)."""
    runs = assemble(read_config_file(DEFAULT_CONFIG_FILE)).flat()  # what python train.py resolves, derived fields too
    lines = ["usage: [torchrun ...] python train.py [CONFIG.py] [--key=value ...]", "",
             "CONFIG.py is a Python file of assignments (default: configs/default.py; configs/sft.py with",
             "--task_type=sft, configs/dpo.py with --task_type=dpo). --key=value wins over it; --flag means True.",
             "--resume --out_dir=RUN continues a run from its exp_config.json.",
             "Each key: --key=DEFAULT (type; python train.py: the value it runs with, from configs/default.py, where it",
             "differs).",
             "Run from the repository root: relative paths (out/, data/, configs/) are taken from there."]
    for sec in _section_fields():
        cls = sec.default_factory
        lines += ["", f"[{sec.name}] {(cls.__doc__ or '').strip().splitlines()[0]}"]
        comments = _field_comments(cls)
        for f in _key_fields(cls):
            note, meaning = comments.get(f.name, ("", ""))
            if note:
                lines += textwrap.wrap(note, 118, initial_indent="  # ", subsequent_indent="  # ")
            default = f.default  # as declared (0 and "auto" say "derive it"), not as one construction derives it
            where = KEYS[f.name][1].__name__
            if runs[f.name] != default:
                where += f"; python train.py: {runs[f.name]!r}"
            lines.append(f"  --{f.name}={default!r} ({where})  {meaning}".rstrip())
    return "\n".join(lines) + "\n"


def _unknown_key_error(key: str, where: str) -> ValueError:
    close = difflib.get_close_matches(key, KEYS.keys(), n=1, cutoff=0.5)
    hint = f"; did you mean --{close[0]}?" if close else "; python train.py --help lists the valid keys"
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
            value = float(text)
            if math.isfinite(value):
                return value
            raise ValueError
        if typ is str:
            return raw
    except ValueError:
        pass
    what = "finite float" if typ is float else typ.__name__
    raise ValueError(f"--{key}={raw!r} is not a valid {what}; example: --{key}={_example(typ)}")


def _example(typ: type) -> str:
    return {bool: "true", int: "8", float: "3e-4", str: "text"}[typ]


def check_type(key: str, value: object, typ: type, where: str) -> object:
    """Type-check a value from a config file; ints are accepted for float fields."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, float) and not math.isfinite(value):
        raise TypeError(f"config key {key!r} {where} must be a finite float, got {value!r}")
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
            key, eq, raw = arg.lstrip("-").partition("=")
            if eq and key in KEYS and not arg.endswith(".py"):
                raise ValueError(f"{arg!r} is not a config file: keys take two dashes, --{key}={raw}")
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


def build_config(argv: list[str]) -> ExperimentConfig:
    """Build the validated, frozen config tree from argv (see the module docstring for the order).

    Every value is resolved here, before any section exists: the file's, the command line's, --init_from's
    architecture; then each section is built once (filling in its own derived fields: Z2allConfig's
    intermediate_size, DDPConfig's comm_hook "auto") and validated. Nothing changes the tree afterwards.
    """
    args = parse_argv(argv)
    resume = bool(args.overrides.get("resume", False)) or _auto_resumes(args.overrides)
    if resume:
        _check_resume_args(args)
        file_values = read_run_config(str(args.overrides["out_dir"]))
        _check_resume_overrides(file_values, args.overrides)
        source, user_file = f"the run's {EXP_CONFIG_NAME}", True
    else:
        task = str(args.overrides.get("task_type", "pretrain"))
        path = args.config_file or DEFAULT_CONFIG_FILES.get(task, DEFAULT_CONFIG_FILE)
        file_values = read_config_file(path)
        rel = os.path.relpath(path)
        source, user_file = (path if rel.startswith("..") else rel), args.config_file is not None
    values = {**file_values, **args.overrides, "resume": resume}
    shape_source = _shape_source(args.overrides, file_values, source)
    if not resume and values.get("init_from"):
        # a recipe picked for the task does not decide the shape of the model being continued; the user's own
        # flags and config file do (and are refused at load when the weights cannot take them)
        user_set = set(args.overrides) | (set(file_values) if user_file else set())
        shape_source = _inherit_architecture(values, user_set, shape_source)
    cfg = assemble(values, shape_source)
    validate(cfg)
    _check_finetune_start(cfg, set(values))
    return cfg


# Keys that define what the run's data position means (micro-batches of batch_size windows of max_seq_len + 1
# tokens, in the order data_seed shuffles them, out of the split valid_ratio leaves): a resume keeps them.
# gradient_accumulation_steps and the number of ranks may change: the position counts micro-batches of one global
# stream, which every world size and accumulation reads in the same order.
DATA_POSITION_KEYS = ("batch_size", "max_seq_len", "data_seed", "valid_ratio", "data_format")


def _check_resume_overrides(saved: dict[str, object], overrides: dict[str, object]) -> None:
    # a mix also fixes the accumulation (its stages start at steps): its stream's check_resume says so
    free = "the number of ranks may change" if saved.get("data_mix") else \
        "the number of ranks and --gradient_accumulation_steps may change"
    for key in DATA_POSITION_KEYS:
        if key in overrides and key in saved and overrides[key] != saved[key]:
            raise ValueError(
                f"--{key}={overrides[key]} on --resume: the run's data position counts micro-batches made with "
                f"{key}={saved[key]!r}, so another value would repeat or skip samples; drop --{key} ({free}), or "
                f"start a new run from this one with --init_from=RUN")


def _check_finetune_start(cfg: ExperimentConfig, given: set[str]) -> None:
    """SFT and DPO fine-tune a trained model; without --init_from and a shape of the user's, the run would build
    the untrained 1.25B default shape (and fail the memory check on a small machine)."""
    t = cfg.train
    if t.task_type in ("sft", "dpo") and not t.resume and not t.init_from and "hidden_dim" not in given:
        raise ValueError(f"--task_type={t.task_type} fine-tunes a trained model: add --init_from=RUN (a run dir, a "
                         f"checkpoint dir or a Hugging Face model dir; e.g. --init_from=out/default after "
                         f"`python train.py`), or give the model shape to train one from scratch")


def _check_resume_args(args: ParsedArgs) -> None:
    if args.config_file is not None and not args.overrides.get("auto_resume"):
        raise ValueError(f"--resume takes its config from <out_dir>/{EXP_CONFIG_NAME}; drop {args.config_file!r} "
                         f"and pass changes as --key=value")
    if "out_dir" not in args.overrides:
        raise ValueError("--resume needs the run to continue: add --out_dir=RUN")
    if args.overrides.get("init_from"):
        raise ValueError("--resume and --init_from exclude each other: resume continues a run (its weights come "
                         "from its checkpoint), init_from starts a new one")


def assemble(values: dict[str, object], shape_source: str = "the defaults (the seed 1.25B shape)") -> ExperimentConfig:
    """The tree from flat, type-checked values (the others take their defaults); each section is built once."""
    by_section: dict[str, dict[str, object]] = {f.name: {} for f in _section_fields()}
    for key, value in values.items():
        by_section[KEYS[key][0]][key] = value
    sections = {f.name: f.default_factory(**by_section[f.name]) for f in _section_fields()}
    return ExperimentConfig(**sections, shape_source=shape_source)


def _auto_resumes(overrides: dict) -> bool:
    """--auto_resume: resume when --out_dir holds a complete checkpoint (then a CONFIG.py given is not read: the
    run's exp_config.json is), else start the run; a launcher can then restart one fixed command any number of
    times (torchrun's c10d rendezvous restarts a node's workers with their first arguments)."""
    if not overrides.get("auto_resume") or "out_dir" not in overrides:
        return False
    from utils.checkpoint import latest_checkpoint

    return latest_checkpoint(ckpt_root(str(overrides["out_dir"]))) is not None


def _shape_source(overrides: dict, file_values: dict, file_source: str) -> str:
    if "hidden_dim" in overrides:
        return "the command line"
    return file_source if "hidden_dim" in file_values else "the defaults (the seed 1.25B shape)"


def _inherit_architecture(values: dict[str, object], user_set: set[str], shape_source: str) -> str:
    """--init_from: each ARCH_KEYS key the user did not set takes that run's value (written into `values`);
    returns where the model shape now comes from."""
    from model.config import ARCH_KEYS
    from model.weights import read_config

    init_from = str(values["init_from"])
    saved, where = read_config(init_from)
    taken = [k for k in ARCH_KEYS if k not in user_set]
    for k in taken:
        values[k] = getattr(saved, k)
    same = os.path.abspath(where) == os.path.abspath(init_from)  # an HF model dir or a saved dir is its own source
    return (f"--init_from={init_from}" + ("" if same else f" ({where})")) if "hidden_dim" in taken else shape_source



def validate(cfg: ExperimentConfig) -> None:
    """Check every section and the rules that span sections."""
    for section in cfg.sections().values():
        section.validate()
    t, o, d = cfg.train, cfg.optim, cfg.ddp
    # The one home of the cross-field ddp/optim rules; the DDP and the optimizer only assert what they rely on.
    if d.comm_hook == "reduce_scatter" and not d.use_distributed_optimizer:
        raise ValueError("--comm_hook=reduce_scatter leaves each rank a shard of the grads: it needs "
                         "--use_distributed_optimizer; add it or use --comm_hook=allreduce")
    if d.use_distributed_optimizer and d.comm_hook not in ("reduce_scatter", "powersgd"):
        raise ValueError(f"--use_distributed_optimizer needs --comm_hook=reduce_scatter (or powersgd), got "
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
    if cfg.data.data_mix and t.task_type != "pretrain":
        raise ValueError(f"--data_mix mixes pretraining corpora; --task_type={t.task_type} reads one set of records: "
                         f"pass --data_dir=FILE_OR_DIR instead")
    if o.loss_scale > 0 and t.dtype != "float16":
        raise ValueError(f"--loss_scale is for --dtype=float16 only (got --dtype={t.dtype}); drop --loss_scale")


def check_world_size(cfg: ExperimentConfig, world_size: int) -> None:
    """The rules that need the number of data-parallel ranks."""
    ga = cfg.train.gradient_accumulation_steps
    if ga % world_size != 0:
        raise ValueError(
            f"--gradient_accumulation_steps={ga} counts micro-batches across all ranks and must be divisible by the "
            f"world size {world_size}; use --gradient_accumulation_steps={max(world_size, ga - ga % world_size)}"
        )


# ---------------------------------------------------------------------------------------------
# saving and reading the resolved config of a run (exp_config.json)


def config_record(cfg: ExperimentConfig) -> dict:
    """The resolved tree as JSON-able data: {section: {key: value}}, without the per-invocation `resume`."""
    out = {}
    for name, section in cfg.sections().items():
        out[name] = {f.name: getattr(section, f.name) for f in _key_fields(type(section))
                     if f.name not in PER_INVOCATION}
    return out


def save_config(cfg: ExperimentConfig, out_dir: str) -> str:
    """Write <out_dir>/exp_config.json atomically (temp file, fsync, rename; a failed write leaves the old file and
    no temp file, and a disk fault is a DiskFault that names the file)."""
    path = os.path.join(out_dir, EXP_CONFIG_NAME)
    text = json.dumps({"format": "z2all.exp_config.v1", "config": config_record(cfg)}, indent=2, sort_keys=True)
    with writing("the run config", path):
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_text(path, text + "\n")
    return path


def read_run_config(out_dir: str) -> dict[str, object]:
    """The flat, type-checked values of a run's saved config, for --resume (parsed as data, never run).

    exp_config.json is read with json; a run from before it holds exp_config.py, whose assignments are read with
    ast.literal_eval (literals only: a name, a call or an import in it is an error, not code that runs).
    """
    path = os.path.join(out_dir, EXP_CONFIG_NAME)
    legacy = os.path.join(out_dir, LEGACY_EXP_CONFIG_NAME)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)["config"]
            flat = {k: v for section in record.values() for k, v in section.items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"cannot read {path} ({type(e).__name__}: {e}); restore it from a backup, or start "
                             f"a new run without --resume") from e
    elif os.path.isfile(legacy):
        path, flat = legacy, _literal_assignments(legacy)
    else:
        raise ValueError(f"cannot resume: {path} does not exist; check --out_dir, or start a new run without --resume")
    values = {}
    for key, value in flat.items():
        if key in REMOVED_KEYS:
            continue
        if key not in KEYS:
            raise _unknown_key_error(key, f"in {path}")
        values[key] = check_type(key, value, KEYS[key][1], f"in {path}")
    return values


def _literal_assignments(path: str) -> dict[str, object]:
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        out = {}
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
                raise ValueError(f"line {node.lineno} is not a `key = literal` assignment")
            out[node.targets[0].id] = ast.literal_eval(node.value)
        return out
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read {path} as data ({e}); restore it, or start a new run without --resume") from e
