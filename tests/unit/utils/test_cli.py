"""utils/cli.py: which exceptions are user errors, the one line printed, exit statuses, Z2ALL_DEBUG."""
import errno
import json

import pytest

from utils.cli import ArgumentParser, UserError, error_line, is_user_error, run_main


def _raiser(exc):
    def main(argv):
        raise exc
    return main


@pytest.mark.parametrize("exc, line", [
    (UserError("data/x.jsonl line 3: bad; fix it"), "data/x.jsonl line 3: bad; fix it"),
    (ValueError("first line\n  second line\n"), "first line second line"),
    (TypeError("--batch_size must be an int"), "--batch_size must be an int"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "cfg.py"),
     "cfg.py: No such file or directory; check the path"),
    (OSError(errno.ENOSPC, "No space left on device", "out/shard.bin"),
     "out/shard.bin: No space left on device; free space there or choose another output directory"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"),
     "/root/x: Permission denied; check its permissions or choose another path"),
    (OSError(errno.EROFS, "Read-only file system", "/ro", None, "/ro/b"),
     "/ro -> /ro/b: Read-only file system; the file system is read-only: choose a writable path"),
])
def test_user_errors_print_one_line_and_return_2(exc, line, capsys, monkeypatch):
    monkeypatch.delenv("Z2ALL_DEBUG", raising=False)
    assert is_user_error(exc) and error_line(exc) == line
    assert run_main(_raiser(exc)) == 2
    out = capsys.readouterr()
    assert out.err == f"error: {line}\n" and not out.out


def test_json_and_unicode_errors_are_user_errors():
    with pytest.raises(ValueError) as bad_json:
        json.loads("{")
    with pytest.raises(ValueError) as bad_utf8:
        b"\xff".decode("utf-8")
    assert is_user_error(bad_json.value) and is_user_error(bad_utf8.value)


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), KeyError("k"), OSError(errno.EIO, "I/O error")])
def test_other_exceptions_propagate(exc, monkeypatch):
    monkeypatch.delenv("Z2ALL_DEBUG", raising=False)
    assert not is_user_error(exc)
    with pytest.raises(type(exc)):
        run_main(_raiser(exc))


@pytest.mark.parametrize("value, reraised", [("1", True), ("yes", True), ("0", False), ("", False)])
def test_debug_env_reraises(value, reraised, monkeypatch, capsys):
    monkeypatch.setenv("Z2ALL_DEBUG", value)
    if reraised:
        with pytest.raises(UserError):
            run_main(_raiser(UserError("x")))
    else:
        assert run_main(_raiser(UserError("x"))) == 2


def test_return_values_and_argv():
    assert run_main(lambda argv: {"result": argv}, ["--a"]) == 0
    assert run_main(lambda argv: 3) == 3
    assert run_main(lambda argv: True) == 0  # a bool is a result, not a status


def test_argument_parser_errors_are_user_errors(capsys):
    p = ArgumentParser(prog="tool")
    p.add_argument("--n", type=int, required=True)
    with pytest.raises(UserError, match=r"tool: argument --n: invalid int value: 'x' \(see --help\)"):
        p.parse_args(["--n=x"])
    with pytest.raises(UserError, match="required: --n"):
        p.parse_args([])
    with pytest.raises(SystemExit) as help_exit:
        p.parse_args(["--help"])
    assert help_exit.value.code == 0 and "usage: tool" in capsys.readouterr().out
