"""configurator.py: parsing, typing, unknown keys, cross-field rules, exp_config.json round trip."""
import os

import pytest

import configurator as c


def test_default_recipe_is_applied_without_a_config_file():
    cfg = c.build_config([])
    assert cfg.train.out_dir == "out/default"
    assert cfg.model.hidden_dim == 256 and cfg.model.vocab_size == 4096
    # intermediate_size is derived from the final hidden_dim, not the dataclass default's.
    assert cfg.model.intermediate_size == 704


def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("import math\nbatch_size = 4\nlearning_rate = 1\nhidden_dim = 512\n_private = 3\n")
    cfg = c.build_config([str(path), "--batch_size=2", "--compile", "--min_lr=0.5"])
    assert cfg.train.batch_size == 2
    assert cfg.train.compile is True
    assert cfg.optim.learning_rate == 1.0 and isinstance(cfg.optim.learning_rate, float)
    assert cfg.model.hidden_dim == 512 and cfg.model.intermediate_size == 1536


@pytest.mark.parametrize("raw,expected", [("true", True), ("False", False), ("1", True), ("no", False)])
def test_bool_parsing(raw, expected):
    assert c.build_config([f"--compile={raw}"]).train.compile is expected


def test_int_accepts_integral_exponent():
    assert c.build_config(["--bucket_size=4e7"]).ddp.bucket_size == 40_000_000


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--batchsize=3"], "did you mean --batch_size"),
        (["--batch_size=x"], "not a valid int"),
        (["--learning_rate=fast"], "not a valid finite float"),
        (["--compile=maybe"], "not a valid bool"),
        (["--batch_size"], "needs a value"),
        (["--batch_size=0"], "must be positive"),
        (["--keep_last_n=1"], "keep_last_n must be >= 2"),
        (["--device=tpu"], "not one of"),
        (["--hidden_dim=100", "--n_heads=3"], "not divisible by n_heads"),
        (["--n_heads=4", "--n_kv_heads=3"], "not divisible by n_kv_heads"),
        (["--comm_hook=reduce_scatter"], "needs --use_distributed_optimizer"),
        (["--use_distributed_optimizer", "--comm_hook=bf16_allreduce"], "needs --comm_hook=reduce_scatter"),
        (["--overlap_param_gather"], "needs --use_distributed_optimizer"),
        (["--overlap_optim_step"], "grad_clip=0"),
        (["--loss_scale=128"], "float16 only"),
        (["--resume"], "add --out_dir"),
        (["--resume", "--init_from=x", "--out_dir=y"], "exclude each other"),
        (["--resume", "--out_dir=/nonexistent/run"], "cannot resume"),
        (["a.py", "b.py"], "two config files"),
        (["missing_config.py"], "does not exist"),
    ],
)
def test_errors_name_the_fix(argv, match):
    with pytest.raises(ValueError, match=match):
        c.build_config(argv)


def test_config_file_errors(tmp_path):
    bad_type = tmp_path / "t.py"
    bad_type.write_text("batch_size = 'eight'\n")
    with pytest.raises(TypeError, match="batch_size.*must be int"):
        c.build_config([str(bad_type)])
    unknown = tmp_path / "u.py"
    unknown.write_text("lerning_rate = 1e-3\n")
    with pytest.raises(ValueError, match="did you mean --learning_rate"):
        c.build_config([str(unknown)])
    broken = tmp_path / "b.py"
    broken.write_text("batch_size = = 3\n")
    with pytest.raises(ValueError, match="failed to execute"):
        c.build_config([str(broken)])


def test_distributed_optimizer_derives_reduce_scatter():
    cfg = c.build_config(["--use_distributed_optimizer"])
    assert cfg.ddp.comm_hook == "reduce_scatter"


def test_world_size_rule():
    cfg = c.build_config(["--gradient_accumulation_steps=6"])
    c.check_world_size(cfg, 3)
    with pytest.raises(ValueError, match="divisible by the world size 4; use --gradient_accumulation_steps=4"):
        c.check_world_size(cfg, 4)


def test_exp_config_round_trip_and_resume_overrides(tmp_path):
    out = str(tmp_path / "run")
    cfg = c.build_config([f"--out_dir={out}", "--batch_size=3", "--hidden_dim=128", "--sample_prompt=it's \"x\""])
    c.save_config(cfg, out)
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    resumed = c.build_config(["--resume", f"--out_dir={out}", "--max_iters=7"])
    assert resumed.train.resume is True
    assert resumed.train.max_iters == 7  # the command line wins over exp_config.json
    assert resumed.train.batch_size == 3 and resumed.model.hidden_dim == 128
    assert resumed.train.sample_prompt == "it's \"x\""
    assert {**resumed.flat(), "resume": False, "max_iters": cfg.train.max_iters} == cfg.flat()


def test_the_tree_is_frozen_and_resolved_once():
    """Nothing changes the config after build_config: each section is frozen, derived fields are filled in at
    construction, and the tokenizer's special ids are not keys (the model takes them from the tokenizer)."""
    import dataclasses

    cfg = c.build_config(["--use_distributed_optimizer", "--hidden_dim=96", "--n_heads=4"])
    for section in cfg.sections().values():
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, dataclasses.fields(section)[0].name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.shape_source = "x"
    assert cfg.ddp.comm_hook == "reduce_scatter" and cfg.model.intermediate_size == 256
    assert "bos_token_id" not in c.KEYS and "bos_token_id" not in cfg.flat()
    with pytest.raises(ValueError, match="unknown config key 'eos_token_id'"):
        c.build_config(["--eos_token_id=3"])
    with_ids = cfg.model.with_special_ids(5, 6, 7)
    assert (with_ids.bos_token_id, with_ids.eos_token_id, with_ids.pad_token_id) == (5, 6, 7)
    assert cfg.model.bos_token_id == 1  # the tree's section is untouched


def test_resume_rejects_a_config_file(tmp_path):
    with pytest.raises(ValueError, match="drop"):
        c.build_config(["configs/default.py", "--resume", f"--out_dir={tmp_path}"])


def test_every_key_has_a_comment():
    import inspect

    for section in c.ExperimentConfig().sections().values():
        source = inspect.getsource(type(section))
        for key in (f.name for f in c._key_fields(type(section))):
            line = next(l for l in source.splitlines() if l.strip().startswith(f"{key}:"))
            assert "#" in line, f"{key} has no comment with its meaning/unit"


def test_run_config_is_data_never_code(tmp_path):
    """exp_config.json is parsed; a legacy exp_config.py is read as literal assignments and never executed."""
    out = tmp_path / "run"
    out.mkdir()
    legacy = out / "exp_config.py"
    legacy.write_text("# [train] TrainConfig\nbatch_size = 3\nsample_prompt = 'x = 1'\n")
    cfg = c.build_config(["--resume", f"--out_dir={out}"])
    assert cfg.train.batch_size == 3 and cfg.train.sample_prompt == "x = 1"
    marker = tmp_path / "ran"
    legacy.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nbatch_size = 3\n")
    with pytest.raises(ValueError, match="not a `key = literal` assignment"):
        c.build_config(["--resume", f"--out_dir={out}"])
    assert not marker.exists()
    (out / "exp_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read .*exp_config.json"):
        c.build_config(["--resume", f"--out_dir={out}"])


def test_help_lists_every_key_with_its_type_default_and_meaning(capsys):
    """Each key once, with its type, its declared default, what `python train.py` runs where that differs (the
    recipe's value or a derived one), and its meaning; section headers are the sections' docstrings; a comment
    above a field is its own note line, never run into the field's meaning."""
    import re

    import train

    assert train.main(["--help"]) == 0
    text = capsys.readouterr().out
    for key, (_, typ) in c.KEYS.items():
        (line,) = [ln for ln in text.splitlines() if ln.startswith(f"  --{key}=")]
        m = re.match(rf"  --{key}=(.*?) \(({typ.__name__})(; python train.py: (.*?))?\)  (.+)$", line)
        assert m and len(m.group(5)) > 3, line
    assert "  --max_iters=1000 (int; python train.py: 400)  optimizer steps of the whole run" in text
    assert "  --hidden_dim=2048 (int; python train.py: 256)  model width d" in text
    assert "  --intermediate_size=0 (int; python train.py: 704)" in text  # derived from the recipe's width
    assert "  --comm_hook='auto' (str; python train.py: 'allreduce')" in text
    assert "  --log_interval=10 (int)  optimizer steps between log lines" in text  # same in both: one value
    assert "[data] Where the pretokenized data lives (one directory, or a mix of corpora) and how it is read." in text
    assert "DataConfig(" not in text
    note = text.index("  # bf16/fp32: one host read of the grad norm per step")
    assert text[note:].splitlines()[1].startswith("  --skip_nonfinite=True (bool)  skip the update on every rank")


def test_auto_resume_resumes_only_a_run_with_a_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fresh = c.build_config(["configs/default.py", f"--out_dir={out}", "--auto_resume", "--batch_size=3"])
    assert fresh.train.resume is False and fresh.train.batch_size == 3
    c.save_config(fresh, str(out))
    import utils.checkpoint

    monkeypatch.setattr(utils.checkpoint, "latest_checkpoint", lambda root: os.path.join(root, "step_000000002"))
    (out / "ckpt").mkdir()
    again = c.build_config(["configs/default.py", f"--out_dir={out}", "--auto_resume"])
    assert again.train.resume is True and again.train.batch_size == 3  # the run's own config, not the file's 8
