"""The demo corpus: a real, deterministic training corpus built from the local Python standard library.

    python -m data_preprocess.demo_corpus --out_dir=data/demo/corpus [--sft_dpo_out_dir=data/demo/sft]

No download: every Python installation has ``sysconfig.get_paths()["stdlib"]``. Each parseable ``.py`` file
(in sorted path order, ``site-packages`` excluded) gives
- a code document: the source text as it is;
- a prose document: its docstrings and full-line comment blocks, in source order (English prose).
Documents go to ``demo_00000.jsonl``... shards (``{"text": ..., "kind": "code" | "prose"}`` per line, about
``shard_bytes`` each; the kind makes the two halves of the demo mix, data_preprocess/demo.py) and
``manifest.json`` (counts, skipped files, shard sizes and sha256) is written last. About 35-45 MB; the output
is byte-identical across runs on the same Python installation (no timestamps, sorted walks, sorted JSON keys).

``build_demo_sft_dpo`` makes a small instruction set from the same source, outside the test suites:
- ``sft.jsonl``: ``{"messages": [{"role": "user", "content": "Write the docstring for this function:\\n<code>"},
  {"role": "assistant", "content": <the real docstring>}, ...]}``, where <code> is the function with its
  docstring removed; 80% of the conversations are one such exchange, 20% are chats of 4-12 of them (functions
  that follow each other in the source), the long tail of real chat sets;
- ``dpo.jsonl``: ``{"prompt": [user message], "chosen": [assistant message with the real docstring],
  "rejected": [assistant message with the same docstring, its words shuffled within each line]}``;
- ``sft_dpo_manifest.json`` with the counts.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import random
import sys
import sysconfig
import textwrap
import tokenize
from typing import Iterator

from utils.cli import ArgumentParser, UserError, run_main
from utils.fileio import atomic_write_bytes

SFT_INSTRUCTION = "Write the docstring for this function:\n"
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_MIN_COMMENT_CHARS = 16  # drop "# noqa"-sized comment blocks: they are not prose


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def list_stdlib_files(root: str, include_tests: bool = True) -> list[str]:
    """Relative POSIX paths of the .py files under ``root``, sorted (so the corpus order is fixed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        rel_dir = os.path.relpath(dirpath, root)
        parts = [] if rel_dir == "." else rel_dir.split(os.sep)
        if not include_tests and any(p in ("test", "tests", "idle_test") for p in parts):
            continue
        out.extend("/".join(parts + [n]) for n in filenames if n.endswith(".py"))
    return sorted(out)


def read_python_source(path: str) -> tuple[str, ast.Module] | None:
    """Decode with the file's declared encoding and parse; None for files that are not valid Python."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        encoding, _ = tokenize.detect_encoding(iter(raw.splitlines(keepends=True)).__next__)
        source = raw.decode(encoding)
        return source, ast.parse(source, filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError, LookupError, OSError):
        return None


def _string_interior_lines(tree: ast.Module) -> set[int]:
    """Line numbers inside multi-line string literals, where a leading '#' is not a comment."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Constant, ast.JoinedStr)) and node.end_lineno and node.end_lineno > node.lineno:
            if isinstance(node, ast.JoinedStr) or isinstance(node.value, (str, bytes)):
                inside.update(range(node.lineno + 1, node.end_lineno + 1))
    return inside


def _comment_blocks(source: str, tree: ast.Module) -> list[tuple[int, str]]:
    """(first line, text) of each run of full-line comments; shebang/encoding lines and rulers dropped."""
    inside = _string_interior_lines(tree)
    blocks: list[tuple[int, str]] = []
    start, lines = 0, []
    for lineno, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        is_comment = stripped.startswith("#") and lineno not in inside
        text = stripped.lstrip("#").strip() if is_comment else ""
        if is_comment and (stripped.startswith("#!") or "coding" in stripped[:30] and lineno <= 2):
            text = ""
        if text:
            start = start or lineno
            lines.append(text)
            continue
        if lines and not (is_comment and not text):  # a bare "#" line continues the block
            block = "\n".join(lines)
            if len(block) >= _MIN_COMMENT_CHARS:
                blocks.append((start, block))
            start, lines = 0, []
    if lines and len("\n".join(lines)) >= _MIN_COMMENT_CHARS:
        blocks.append((start, "\n".join(lines)))
    return blocks


def _docstrings(tree: ast.Module) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                out.append((node.body[0].lineno, doc.strip()))
    return out


def extract_prose(source: str, tree: ast.Module) -> str:
    """Docstrings and comment blocks of one file, in source order, separated by blank lines."""
    parts = sorted(_docstrings(tree) + _comment_blocks(source, tree))
    return "\n\n".join(text for _, text in parts)


class _ShardWriter:
    """jsonl shards of about ``shard_bytes`` each, every one written to a temp name and renamed."""

    def __init__(self, out_dir: str, shard_bytes: int):
        self.out_dir, self.shard_bytes = out_dir, shard_bytes
        self.shards: list[dict] = []
        self._buf: list[bytes] = []
        self._size = 0

    def add(self, text: str, kind: str) -> None:
        line = (json.dumps({"text": text, "kind": kind}, ensure_ascii=False) + "\n").encode("utf-8")
        self._buf.append(line)
        self._size += len(line)
        if self._size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        name = f"demo_{len(self.shards):05d}.jsonl"
        data = b"".join(self._buf)
        _atomic_write(os.path.join(self.out_dir, name), data)
        self.shards.append({"file": name, "documents": len(self._buf), "bytes": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})
        self._buf, self._size = [], 0


def build_demo_corpus(out_dir: str, shard_bytes: int = 8 << 20, show_progress: bool = True,
                      root: str | None = None) -> list[str]:
    """Build the corpus (see the module docstring); returns the shard paths in order.

    1. List the stdlib .py files in sorted order.
    2. For each parseable file: emit the code document, then the prose document (if any).
    3. Write shards as they fill, remove shards left over from an earlier, larger build.
    4. Write manifest.json last.
    """
    from utils.progress import progress_bar

    root = root or stdlib_root()
    os.makedirs(out_dir, exist_ok=True)
    files = list_stdlib_files(root)
    writer = _ShardWriter(out_dir, shard_bytes)
    counts = {"code_documents": 0, "prose_documents": 0, "characters": 0}
    skipped = []
    for rel in progress_bar(files, enabled=show_progress, desc="demo corpus (stdlib files)", unit="file"):
        parsed = read_python_source(os.path.join(root, rel))
        if parsed is None or not parsed[0].strip():
            skipped.append(rel)
            continue
        source, tree = parsed
        writer.add(source, "code")
        counts["code_documents"] += 1
        counts["characters"] += len(source)
        prose = extract_prose(source, tree)
        if prose:
            writer.add(prose, "prose")
            counts["prose_documents"] += 1
            counts["characters"] += len(prose)
    writer.flush()
    keep = {s["file"] for s in writer.shards}
    for name in sorted(os.listdir(out_dir)):
        if name.startswith("demo_") and name.endswith(".jsonl") and name not in keep:
            os.remove(os.path.join(out_dir, name))
    manifest = {"source": "python standard library", "python_version": platform.python_version(),
                "stdlib": root, "files_listed": len(files), "files_used": len(files) - len(skipped),
                "files_skipped": skipped, **counts, "documents": counts["code_documents"] + counts["prose_documents"],
                "bytes": sum(s["bytes"] for s in writer.shards), "shards": writer.shards}
    _atomic_write(os.path.join(out_dir, "manifest.json"), _json_bytes(manifest))
    if show_progress:
        print(f"demo corpus: {manifest['documents']} documents ({counts['code_documents']} code, "
              f"{counts['prose_documents']} prose), {manifest['bytes'] / 1e6:.1f} MB in "
              f"{len(writer.shards)} shards -> {out_dir}", flush=True)
    return [os.path.join(out_dir, s["file"]) for s in writer.shards]


def _function_without_docstring(source_lines: list[str], node: ast.AST) -> str | None:
    """The function's source (decorators excluded) with its docstring lines removed, dedented; None when
    the docstring shares a line with other code or is the whole body."""
    doc = node.body[0]
    if len(node.body) < 2 or doc.lineno <= node.lineno:
        return None
    first, last = source_lines[doc.lineno - 1], source_lines[doc.end_lineno - 1]
    if first[:doc.col_offset].strip() or last[doc.end_col_offset:].strip():
        return None
    kept = source_lines[node.lineno - 1:doc.lineno - 1] + source_lines[doc.end_lineno:node.end_lineno]
    return textwrap.dedent("".join(kept)).rstrip() + "\n"


def iter_docstring_tasks(root: str, max_code_chars: int = 1500,
                         doc_chars: tuple[int, int] = (20, 800)) -> Iterator[tuple[str, str]]:
    """(code without docstring, docstring) for the documented functions of the non-test stdlib, in order."""
    for rel in list_stdlib_files(root, include_tests=False):
        parsed = read_python_source(os.path.join(root, rel))
        if parsed is None:
            continue
        source, tree = parsed
        lines = source.splitlines(keepends=True)
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in sorted(functions, key=lambda n: (n.lineno, n.col_offset)):
            doc = ast.get_docstring(node, clean=True)
            if not doc or not doc_chars[0] <= len(doc.strip()) <= doc_chars[1]:
                continue
            code = _function_without_docstring(lines, node)
            if code and len(code) <= max_code_chars:
                yield code, doc.strip()


SFT_DPO_VERSION = 2  # of the demo SFT/DPO set; 2: multi-turn chats, garbled rejected answers
LONG_CHAT_SHARE = 0.2  # share of SFT conversations that are long multi-turn chats
LONG_CHAT_TURNS = (4, 12)  # user/assistant turn pairs of a long chat, uniform in this range


def group_into_chats(n_tasks: int, seed: int = 0) -> list[range]:
    """Consecutive task indices grouped into conversations: most single-turn, a long tail of multi-turn chats.

    Real chat sets (ShareGPT, LMSYS) are skewed the same way: many short exchanges and a few long sessions,
    which is what makes padding wasteful and packing worth it. Deterministic for a given seed.
    """
    rng, out, i = random.Random(seed), [], 0
    while i < n_tasks:
        k = rng.randint(*LONG_CHAT_TURNS) if rng.random() < LONG_CHAT_SHARE else 1
        out.append(range(i, min(i + k, n_tasks)))
        i += k
    return out


def garble(text: str, seed: int) -> str:
    """The words of each line of text in a shuffled order (whitespace runs kept): a fluent answer garbled.

    The demo's rejected answers: the 5M demo model can learn to prefer a fluent docstring over the same words
    out of order, which it cannot for another function's docstring (it does not read code that well).
    """
    rng, lines = random.Random(seed), []
    for line in text.split("\n"):
        words = line.split(" ")
        order = list(range(len(words)))
        rng.shuffle(order)
        lines.append(" ".join(words[j] for j in order))
    return "\n".join(lines)


def build_demo_sft_dpo(out_dir: str, max_examples: int = 20000, root: str | None = None) -> dict[str, str]:
    """Write sft.jsonl, dpo.jsonl and sft_dpo_manifest.json (see the module docstring); returns their paths.

    SFT: the tasks grouped by group_into_chats, one user/assistant turn pair per task. DPO: one pair per task,
    rejected = garble(chosen); a task whose garbled docstring equals the real one (a single word) is dropped.
    """
    tasks = list(iter_docstring_tasks(root or stdlib_root()))[:max_examples]
    if len(tasks) < 2:
        raise ValueError(f"found {len(tasks)} documented functions in {root or stdlib_root()}; need at least 2")
    os.makedirs(out_dir, exist_ok=True)
    turns = [[{"role": "user", "content": SFT_INSTRUCTION + code}, {"role": "assistant", "content": doc}]
             for code, doc in tasks]
    sft_lines = [{"messages": [m for i in chat for m in turns[i]]} for chat in group_into_chats(len(tasks))]
    dpo_lines, dropped = [], 0
    for i, (user, chosen) in enumerate(turns):
        rejected = garble(chosen["content"], seed=i)
        if rejected == chosen["content"]:
            dropped += 1
            continue
        dpo_lines.append({"prompt": [user], "chosen": [chosen],
                          "rejected": [{"role": "assistant", "content": rejected}]})
    paths = {"sft": os.path.join(out_dir, "sft.jsonl"), "dpo": os.path.join(out_dir, "dpo.jsonl"),
             "manifest": os.path.join(out_dir, "sft_dpo_manifest.json")}
    _atomic_write(paths["sft"], b"".join(_json_bytes(x, indent=None) for x in sft_lines))
    _atomic_write(paths["dpo"], b"".join(_json_bytes(x, indent=None) for x in dpo_lines))
    manifest = {"version": SFT_DPO_VERSION, "source": "python standard library docstrings", "python_version": platform.python_version(),
                "tasks": len(tasks), "sft_examples": len(sft_lines),
                "sft_multi_turn": sum(len(m["messages"]) > 2 for m in sft_lines),
                "dpo_pairs": len(dpo_lines), "dpo_dropped": dropped}
    _atomic_write(paths["manifest"], _json_bytes(manifest))
    return paths


def _json_bytes(obj: dict, indent: int | None = 2) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=indent) + "\n").encode("utf-8")


def _atomic_write(path: str, data: bytes) -> None:
    atomic_write_bytes(path, data, durable=False)  # a failed write leaves no temp file


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description="Build the demo corpus (and SFT/DPO set) from the Python stdlib.")
    p.add_argument("--out_dir", required=True, help="where the jsonl shards and manifest.json go")
    p.add_argument("--shard_mb", type=int, default=8, help="approximate shard size in MB")
    p.add_argument("--sft_dpo_out_dir", default="", help="also build the demo SFT/DPO set there")
    p.add_argument("--root", default="", help="source tree to read instead of the local stdlib (tests)")
    args = p.parse_args(argv)
    if args.shard_mb < 1:
        raise UserError(f"--shard_mb must be >= 1, got {args.shard_mb}")
    root = args.root or None
    if root is not None and not os.path.isdir(root):
        raise UserError(f"--root={root!r} is not a directory: pass a source tree, or leave it out for the stdlib")
    for flag, out in (("--out_dir", args.out_dir), ("--sft_dpo_out_dir", args.sft_dpo_out_dir)):
        if out and os.path.exists(out) and not os.path.isdir(out):
            raise UserError(f"{flag}={out} is a file, not a directory: pass a directory")
    build_demo_corpus(args.out_dir, shard_bytes=args.shard_mb << 20, root=root)
    if args.sft_dpo_out_dir:
        paths = build_demo_sft_dpo(args.sft_dpo_out_dir, root=root)
        print(f"demo SFT/DPO set -> {', '.join(paths.values())}", flush=True)


if __name__ == "__main__":
    sys.exit(run_main(main))
