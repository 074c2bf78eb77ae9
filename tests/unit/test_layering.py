"""The import rules of ARCHITECTURE.md ("Imports point one way"): every top-level part of the repository is
listed here with what it may import, imports point one way, and project modules form no cycle.

The checker sees every import statement anywhere in a file (module level, inside functions, under TYPE_CHECKING)
and imports by string (`importlib.import_module("x.y")`, `__import__("x")` with a literal name). A top-level
folder or module that this file does not list fails the check, so a new package cannot escape it either way.
"""
import ast
import os

import pytest

from tests.conftest import ROOT

# Which top-level parts of the project each part may import (besides itself).
ALLOWED = {
    "utils": set(),
    "model": {"utils"},
    "tokenizer": {"utils"},
    "parallel": {"utils"},
    "dataset": {"tokenizer", "utils"},
    "data_preprocess": {"dataset", "tokenizer", "utils"},
    "optimizer": {"parallel", "utils"},
    "tasks": {"model", "tokenizer", "parallel", "dataset", "data_preprocess", "optimizer", "utils"},
    "configurator": {"model", "parallel", "optimizer", "dataset", "tokenizer", "tasks", "utils"},
    "monitor_process": {"utils"},
    "configs": set(),
}
# The entry point, the benchmarks and the tests may import any part; no part may import them.
TOP = {"train", "bench", "tests"}
NOT_PYTHON = {"scripts", "data", "out", "runs"}  # shell scripts, and the git-ignored data and run folders
PARTS = set(ALLOWED) | TOP


def project_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in NOT_PYTHON | {"__pycache__"}]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield path, rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _string_import(node: ast.Call) -> str | None:
    """The module a call imports by a literal name: importlib.import_module("a.b"), import_module("a"),
    __import__("a")."""
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def imports_of(path, module):
    """Every project-or-not module a file imports, anywhere in it: (imported name, line). Relative imports are
    resolved; string imports with a literal name are included."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_pkg = path.endswith("__init__.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            for alias in node.names:
                yield f"{prefix}.{alias.name}", node.lineno
        elif isinstance(node, ast.Call) and (name := _string_import(node)) is not None:
            yield name, node.lineno


MODULES = dict((rel, path) for path, rel in project_files())


def resolve(name):
    """The longest project module that `name` names, or None for third-party imports."""
    parts = name.split(".")
    if parts[0] not in {m.split(".")[0] for m in MODULES}:
        return None
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def test_every_top_level_part_is_listed():
    found = {m.split(".")[0] for m in MODULES}
    unknown = sorted(found - PARTS)
    assert not unknown, (f"top-level parts {unknown} are not in tests/unit/test_layering.py: add each to ALLOWED (with "
                         f"what it may import, and to the parts that may import it) and to ARCHITECTURE.md")


def forbidden_edges(modules: dict) -> list[str]:
    bad = []
    for module, path in modules.items():
        part = module.split(".")[0]
        if part in TOP:
            continue  # the entry point, benchmarks and tests may import anything
        for name, line in imports_of(path, module):
            target = resolve(name)
            if target is None or target.split(".")[0] == part:
                continue
            tpart = target.split(".")[0]
            if tpart not in ALLOWED.get(part, set()):
                may = "nothing of the project" if not ALLOWED.get(part) else sorted(ALLOWED[part])
                bad.append(f"{os.path.relpath(path, ROOT)}:{line} imports {target} ({part} may import {may})")
    return bad


def test_no_forbidden_edges():
    bad = forbidden_edges(MODULES)
    assert not bad, "forbidden imports (see ARCHITECTURE.md):\n" + "\n".join(bad)


def find_cycle(modules: dict) -> list[str] | None:
    """A cycle of project modules through any of their imports (module level or inside functions), or None."""
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for name, _ in imports_of(path, module):
            target = resolve(name)
            if target is not None and target != module and target in graph:
                graph[module].add(target)
    state, stack = {}, []

    def visit(m):
        state[m] = "active"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "active":
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(MODULES)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_every_kind_of_import(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("import os\nimport importlib\nfrom model.ops import rms_norm\n"
                    "def f():\n    import parallel.ddp\n    return importlib.import_module('tasks.trainer')\n"
                    "g = __import__('dataset.format')\n")
    names = [n for n, _ in imports_of(str(path), "utils.x")]
    assert {"model.ops.rms_norm", "parallel.ddp", "tasks.trainer", "dataset.format"} <= set(names)


def test_the_checker_fails_each_rule(tmp_path, monkeypatch):
    """A forbidden string import, an import of bench/ from a part, and a cycle through function-level imports."""
    files = {"utils.a": "import importlib\nM = importlib.import_module('model.config')\n",
             "model.b": "def f():\n    import bench.mfu\n",
             "model.c": "def f():\n    import model.d\n", "model.d": "import model.c\n"}
    fake = {}
    for module, text in files.items():
        p = tmp_path / f"{module}.py"
        p.write_text(text)
        fake[module] = str(p)
    for module in ("model.c", "model.d"):
        monkeypatch.setitem(MODULES, module, fake[module])
    bad = forbidden_edges({k: fake[k] for k in ("utils.a", "model.b")})
    assert len(bad) == 2 and "imports model.config (utils may import nothing" in bad[0] and "imports bench.mfu" in bad[1]
    assert find_cycle({k: fake[k] for k in ("model.c", "model.d")}) == ["model.c", "model.d", "model.c"]
    with pytest.raises(AssertionError, match="not in tests/unit/test_layering.py"):
        monkeypatch.setitem(MODULES, "newpkg.mod", fake["utils.a"])
        test_every_top_level_part_is_listed()
