"""The import rules of DESIGN.md: imports point one way, and project modules form no cycle."""
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
PARTS = set(ALLOWED) | {"train", "bench", "tests", "scripts"}


def project_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("data", "out", "__pycache__")]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                yield path, rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(path, module, top_level_only):
    """Project modules imported by a file: (imported module, line). Relative imports are resolved."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    nodes = tree.body if top_level_only else ast.walk(tree)
    is_pkg = path.endswith("__init__.py")
    for node in nodes:
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


MODULES = dict((rel, path) for path, rel in project_files())


def resolve(name):
    """The longest project module that `name` names, or None for third-party imports."""
    parts = name.split(".")
    if parts[0] not in PARTS:
        return None
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def test_no_forbidden_edges():
    bad = []
    for module, path in MODULES.items():
        part = module.split(".")[0]
        if part not in ALLOWED:
            continue  # train.py, bench/, tests/ may import anything
        for name, line in imports_of(path, module, top_level_only=False):
            target = resolve(name)
            if target is None:
                continue
            tpart = target.split(".")[0]
            if tpart != part and tpart not in ALLOWED[part]:
                bad.append(f"{os.path.relpath(path, ROOT)}:{line} imports {target} ({part} may import {sorted(ALLOWED[part]) or 'nothing'})")
    assert not bad, "forbidden imports (see DESIGN.md):\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for name, _ in imports_of(path, module, top_level_only=True):
            target = resolve(name)
            if target is not None and target != module:
                graph[module].add(target)
    state, stack = {}, []

    def visit(m):
        state[m] = "active"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "active":
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_checker_sees_a_forbidden_edge(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("import os\nfrom model.ops import rms_norm\ndef f():\n    import parallel.ddp\n")
    names = [n for n, _ in imports_of(str(path), "utils.x", top_level_only=False)]
    assert "model.ops.rms_norm" in names and "parallel.ddp" in names
