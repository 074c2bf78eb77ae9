"""No module of ours may share a name with an installed distribution's top-level package or a stdlib module.

Python puts the directory of the script it runs first on sys.path, so a file there shadows any installed
package of the same name. transformers 5 imports the PyPI package `kernels`; `python bench/train_step.py` then
imported our bench/kernels.py in its place and every Hugging Face case failed. The directories checked are those
whose files run by path (python train.py, python bench/X.py, torchrun tests/dist/X.py) plus the repository root,
which is on sys.path for every entry point.
"""
import importlib.metadata
import os
import sys

from tests.conftest import ROOT

SCRIPT_DIRS = ("", "bench", "scripts", "tests/dist")


def module_names(directory: str) -> set[str]:
    """The top-level names a directory on sys.path provides: foo.py and packages (folders with .py files)."""
    out = set()
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if entry.endswith(".py"):
            out.add(entry[:-3])
        elif os.path.isdir(path) and not entry.startswith((".", "__")) and any(
                n.endswith(".py") for n in os.listdir(path)):
            out.add(entry)
    return out


def installed_top_level() -> dict[str, list[str]]:
    """{top-level import name: [distributions providing it]} for everything installed, plus the stdlib."""
    names = dict(importlib.metadata.packages_distributions())
    for name in sys.stdlib_module_names:
        names.setdefault(name, ["the standard library"])
    return names


def test_no_module_shadows_an_installed_package():
    installed = installed_top_level()
    clashes = []
    for rel in SCRIPT_DIRS:
        directory = os.path.join(ROOT, rel)
        for name in sorted(module_names(directory)):
            if name in installed:
                clashes.append(f"{os.path.join(rel, name) or name} shadows {name!r} of {', '.join(installed[name])}")
    assert not clashes, "rename these modules:\n" + "\n".join(clashes)


def test_the_check_sees_a_clash(tmp_path):
    (tmp_path / "kernels.py").write_text("")
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "x.py").write_text("")
    (tmp_path / "empty").mkdir()
    assert module_names(str(tmp_path)) == {"kernels", "json"}
    assert "json" in installed_top_level()
