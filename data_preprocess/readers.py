"""Streaming document readers for .txt, .json, .jsonl and .parquet files.

Every reader yields one document (a ``str``) at a time and keeps memory flat however large the file:
.jsonl and .txt are read line by line, .json (a top-level array) is streamed with ijson, and .parquet is
read one row group at a time through ``pyarrow.ParquetFile.iter_batches`` with only the needed columns.

Document boundaries:
- .jsonl: one JSON object per non-empty line.
- .json: one object per element of the top-level array.
- .parquet: one row.
- .txt: ``txt_mode="paragraph"`` (the default) makes one document per paragraph, i.e. per run of
  non-blank lines (blank lines separate documents, the line breaks inside a paragraph are kept);
  ``txt_mode="line"`` makes one document per non-blank line (the usual layout of tokenizer-training
  dumps). A whole-file mode is deliberately not offered: one document per file is unbounded in memory.

The text field is ``"text"`` by default; any column/key name works (``"content"``), and ``"title+content"``
joins the two with a newline (a missing or empty title gives the content alone, a missing content is a bad
record). Empty documents are skipped and counted in ``ReadStats.empty``, not treated as errors.

Bad input: a malformed line/record raises ``ValueError`` naming the file and the line (json: the record
index; parquet: the row group and row) and suggesting ``--skip_bad_records``. With ``skip_bad_records=True``
the record is skipped and counted in the ``ReadStats`` passed by the caller, which reports the count at the
end (``ReadStats.summary()``). A .json file whose JSON syntax breaks mid-stream cannot be resynchronised:
with ``skip_bad_records`` the rest of that file counts as one bad record and reading moves to the next file.

``iter_records`` yields whole records (.jsonl/.json/.parquet) through a caller's parse function instead of a
text field (the SFT/DPO formats of data_preprocess.chat_formats), with the same errors and counts.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TypeVar

SUPPORTED_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")
TXT_MODES = ("paragraph", "line")
_PARQUET_BATCH_ROWS = 1024
T = TypeVar("T")
_SKIP_HINT = "fix the input or pass --skip_bad_records to skip and count such records"


@dataclass
class FileStats:
    documents: int = 0
    bad_records: int = 0
    empty: int = 0


@dataclass
class ReadStats:
    """Counts collected while reading; pass one instance to every ``iter_documents`` call of a run."""

    documents: int = 0
    bad_records: int = 0
    empty: int = 0
    per_file: dict[str, FileStats] = field(default_factory=dict)

    def _file(self, path: str) -> FileStats:
        return self.per_file.setdefault(path, FileStats())

    def add_document(self, path: str) -> None:
        self.documents += 1
        self._file(path).documents += 1

    def add_bad(self, path: str) -> None:
        self.bad_records += 1
        self._file(path).bad_records += 1

    def add_empty(self, path: str) -> None:
        self.empty += 1
        self._file(path).empty += 1

    def summary(self) -> str:
        n = len(self.per_file)
        text = f"read {self.documents} documents from {n} file{'s' if n != 1 else ''}"
        if self.empty:
            text += f", skipped {self.empty} empty documents"
        if self.bad_records:
            worst = sorted(self.per_file.items(), key=lambda kv: -kv[1].bad_records)[:5]
            detail = ", ".join(f"{os.path.basename(p)}: {fs.bad_records}" for p, fs in worst if fs.bad_records)
            text += f", skipped {self.bad_records} bad records ({detail})"
        return text


def _is_data_file(name: str) -> bool:
    if name.startswith(".") or name == "manifest.json" or name.endswith("_manifest.json"):
        return False
    return name.endswith(SUPPORTED_SUFFIXES)


def list_input_files(files_or_dir: str | Iterable[str]) -> list[str]:
    """Expand files and directories (a list, or one string with commas) into a sorted list of input files.

    Directories are walked recursively and contribute the files with a supported suffix
    (.txt .json .jsonl .parquet), except metadata: hidden files and ``manifest.json`` / ``*_manifest.json``
    (the demo corpus and other tools write those beside their data). Files named explicitly must have a
    supported suffix and are always taken.
    """
    items = [s for s in files_or_dir.split(",")] if isinstance(files_or_dir, str) else list(files_or_dir)
    items = [s.strip() for s in items if s and s.strip()]
    if not items:
        raise ValueError("no input given: pass --input=FILE_OR_DIR (several separated by commas)")
    found: set[str] = set()
    for item in items:
        if os.path.isdir(item):
            for root, dirs, names in os.walk(item):
                dirs.sort()
                found.update(os.path.join(root, n) for n in names if _is_data_file(n))
        elif os.path.isfile(item):
            if not item.endswith(SUPPORTED_SUFFIXES):
                raise ValueError(f"input file {item!r} has an unsupported suffix; "
                                 f"supported: {', '.join(SUPPORTED_SUFFIXES)}")
            found.add(item)
        else:
            raise ValueError(f"input {item!r} does not exist: pass an existing file or directory to --input")
    if not found:
        raise ValueError(f"no input files ({', '.join(SUPPORTED_SUFFIXES)}) found in {', '.join(items)}: "
                         "check --input")
    return sorted(found)


def _bad(path: str, where: str, what: str, skip: bool, stats: ReadStats | None) -> None:
    """Count a bad record when skipping, else raise the error that names the file and location."""
    if skip:
        if stats is not None:
            stats.add_bad(path)
        return
    what = " ".join(what.split())  # parser messages may span lines (ijson draws an arrow)
    raise ValueError(f"{path}: {where}: {what}; {_SKIP_HINT}")


def _record_text(record: object, text_field: str) -> str:
    """Extract the document text from a JSON object / row dict; raise KeyError/TypeError when malformed."""
    if not isinstance(record, dict):
        raise TypeError(f"expected a JSON object, got {type(record).__name__}")
    if text_field == "title+content":
        content = record.get("content")
        if not isinstance(content, str):
            raise TypeError(f"field 'content' is {'missing' if content is None else type(content).__name__}")
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise TypeError(f"field 'title' is {type(title).__name__}, expected a string")
        return f"{title}\n{content}" if title else content
    value = record.get(text_field)
    if not isinstance(value, str):
        keys = ", ".join(sorted(map(str, record))[:20])
        state = "missing" if value is None else f"a {type(value).__name__}"
        raise TypeError(f"field {text_field!r} is {state} (keys: {keys}); set --text_field")
    return value


def _emit(path: str, text: str, stats: ReadStats | None) -> bool:
    """Count the document; return False for an empty one (which is skipped, not yielded)."""
    if not text.strip():
        if stats is not None:
            stats.add_empty(path)
        return False
    if stats is not None:
        stats.add_document(path)
    return True


def _iter_jsonl(path: str, text_field: str, skip: bool, stats: ReadStats | None) -> Iterator[str]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = _record_text(json.loads(raw), text_field)
            except (ValueError, TypeError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                _bad(path, f"line {lineno}", f"bad JSON record ({e})", skip, stats)
                continue
            if _emit(path, text, stats):
                yield text


def _check_json_array(path: str) -> None:
    """ijson silently yields nothing for a non-array top level; fail clearly instead."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise ValueError(f"{path}: the file is empty; a .json input must hold a top-level array of objects")
    if head[:1] != b"[":
        raise ValueError(f"{path}: a .json input must hold a top-level array of objects (starts with "
                         f"{head[:20]!r}); for one object per line rename it to .jsonl")


def _iter_json(path: str, text_field: str, skip: bool, stats: ReadStats | None) -> Iterator[str]:
    import ijson

    _check_json_array(path)
    index = -1
    with open(path, "rb") as f:
        records = ijson.items(f, "item", use_float=True)
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except (ijson.JSONError, ValueError) as e:
                # The parser cannot resume after a syntax error: the rest of the file is one bad record.
                _bad(path, f"after record {index} (0-based)", f"invalid JSON ({e})", skip, stats)
                return
            index += 1
            try:
                text = _record_text(record, text_field)
            except (ValueError, TypeError) as e:
                _bad(path, f"record {index} (0-based)", f"bad record ({e})", skip, stats)
                continue
            if _emit(path, text, stats):
                yield text


def _iter_txt(path: str, txt_mode: str, skip: bool, stats: ReadStats | None) -> Iterator[str]:
    """Decode line by line so that a bad byte sequence can be reported (or skipped) with its line number."""
    para: list[str] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _bad(path, f"line {lineno}", f"invalid UTF-8 ({e})", skip, stats)
                continue
            if txt_mode == "line":
                text = line.rstrip("\r\n")
                if text.strip() and _emit(path, text, stats):
                    yield text
            elif line.strip():
                para.append(line)
            elif para:
                text = "".join(para).rstrip("\r\n")
                para = []
                if _emit(path, text, stats):
                    yield text
    if para:
        text = "".join(para).rstrip("\r\n")
        if _emit(path, text, stats):
            yield text


def _iter_parquet(path: str, text_field: str, skip: bool, stats: ReadStats | None) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e}); remove it from --input") from e
    available = list(pf.schema_arrow.names)
    columns = ["title", "content"] if text_field == "title+content" else [text_field]
    required = ["content"] if text_field == "title+content" else columns
    missing = [c for c in required if c not in available]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r}; available columns: {', '.join(available)}; "
                         "set --text_field to one of them (or title+content)")
    columns = [c for c in columns if c in available]
    for rg in range(pf.num_row_groups):
        row = 0
        try:
            batches = pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[rg], columns=columns)
            for batch in batches:
                cols = {name: batch.column(i).to_pylist() for i, name in enumerate(batch.schema.names)}
                for i in range(batch.num_rows):
                    record = {name: values[i] for name, values in cols.items()}
                    try:
                        text = _record_text(record, text_field)
                    except (ValueError, TypeError) as e:
                        _bad(path, f"row group {rg}, row {row + i}", f"bad row ({e})", skip, stats)
                        continue
                    if _emit(path, text, stats):
                        yield text
                row += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            _bad(path, f"row group {rg}", f"unreadable row group ({e})", skip, stats)


def iter_documents(path: str, text_field: str = "text", skip_bad_records: bool = False,
                   stats: ReadStats | None = None, txt_mode: str = "paragraph") -> Iterator[str]:
    """Yield the documents of one file (see the module docstring for formats, boundaries and errors)."""
    if not text_field or not isinstance(text_field, str):
        raise ValueError(f"--text_field must be a non-empty field name (or title+content), got {text_field!r}")
    if txt_mode not in TXT_MODES:
        raise ValueError(f"--txt_mode must be one of {', '.join(TXT_MODES)}, got {txt_mode!r}")
    if not os.path.isfile(path):
        raise ValueError(f"input file {path!r} does not exist")
    if path.endswith(".jsonl"):
        return _iter_jsonl(path, text_field, skip_bad_records, stats)
    if path.endswith(".json"):
        return _iter_json(path, text_field, skip_bad_records, stats)
    if path.endswith(".parquet"):
        return _iter_parquet(path, text_field, skip_bad_records, stats)
    if path.endswith(".txt"):
        return _iter_txt(path, txt_mode, skip_bad_records, stats)
    raise ValueError(f"input file {path!r} has an unsupported suffix; supported: {', '.join(SUPPORTED_SUFFIXES)}")


def iter_all_documents(files: Iterable[str], text_field: str = "text", skip_bad_records: bool = False,
                       stats: ReadStats | None = None, txt_mode: str = "paragraph") -> Iterator[str]:
    """Chain ``iter_documents`` over several files, in the given order."""
    for path in files:
        yield from iter_documents(path, text_field, skip_bad_records, stats, txt_mode)


def _jsonl_records(path: str) -> Iterator[tuple[str, object, Exception | None]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield f"line {lineno}", json.loads(raw), None
            except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                yield f"line {lineno}", None, ValueError(f"bad JSON ({e})")


def _json_records(path: str) -> Iterator[tuple[str, object, Exception | None]]:
    import ijson

    _check_json_array(path)
    with open(path, "rb") as f:
        records = ijson.items(f, "item", use_float=True)
        for index in itertools.count():
            try:
                record = next(records)
            except StopIteration:
                return
            except (ijson.JSONError, ValueError) as e:
                # The parser cannot resume after a syntax error: the rest of the file is one bad record.
                yield f"after record {index - 1} (0-based)", None, ValueError(f"invalid JSON ({e})")
                return
            yield f"record {index} (0-based)", record, None


def _parquet_records(path: str) -> Iterator[tuple[str, object, Exception | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({e}); remove it from --input") from e
    for rg in range(pf.num_row_groups):
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[rg]):
                for i, record in enumerate(batch.to_pylist()):
                    yield f"row group {rg}, row {row + i}", record, None
                row += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            yield f"row group {rg}", None, ValueError(f"unreadable row group ({e})")


def iter_records(path: str, parse: Callable[[dict], T], skip_bad_records: bool = False,
                 stats: ReadStats | None = None) -> Iterator[T]:
    """Yield ``parse(record)`` for each whole record (a JSON object, or a parquet row as a dict) of a .jsonl,
    .json or .parquet file, streamed like ``iter_documents`` (SFT/DPO inputs: messages, pairs, ...).

    ``parse`` raises ValueError or TypeError for a malformed record. That record, like one that is not valid
    JSON, raises ValueError naming the file, the line (json: the record index; parquet: the row group and row)
    and what is wrong, or with ``skip_bad_records`` is skipped and counted in ``stats.bad_records``. Each
    parsed record counts as one document in ``stats``.
    """
    readers = {".jsonl": _jsonl_records, ".json": _json_records, ".parquet": _parquet_records}
    suffix = os.path.splitext(path)[1]
    if suffix not in readers:
        raise ValueError(f"input file {path!r}: records are read from {', '.join(readers)} files, not {suffix!r}; "
                         "convert it or remove it from --input")
    if not os.path.isfile(path):
        raise ValueError(f"input file {path!r} does not exist")
    for where, record, error in readers[suffix](path):
        try:
            if error is not None:
                raise error
            if not isinstance(record, dict):
                raise TypeError(f"expected a JSON object, got {type(record).__name__}")
            value = parse(record)
        except (ValueError, TypeError) as e:
            _bad(path, where, str(e), skip_bad_records, stats)
            continue
        if stats is not None:
            stats.add_document(path)
        yield value
