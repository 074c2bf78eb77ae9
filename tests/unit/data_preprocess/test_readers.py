"""Readers: every format, text_field variants, bad input (each a test) and flat memory."""
import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_preprocess.readers import ReadStats, iter_all_documents, iter_documents, list_input_files


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_jsonl_json_parquet_txt(tmp_path):
    recs = [{"text": "hello"}, {"text": "世界"}, {"text": ""}]
    assert list(iter_documents(_write_jsonl(tmp_path / "a.jsonl", recs))) == ["hello", "世界"]
    (tmp_path / "b.json").write_text(json.dumps(recs), encoding="utf-8")
    assert list(iter_documents(str(tmp_path / "b.json"))) == ["hello", "世界"]
    pq.write_table(pa.table({"id": [1, 2], "text": ["p1", "p2"]}), tmp_path / "c.parquet", row_group_size=1)
    assert list(iter_documents(str(tmp_path / "c.parquet"))) == ["p1", "p2"]
    (tmp_path / "d.txt").write_text("a b\nc\n\n\nd\n", encoding="utf-8")
    assert list(iter_documents(str(tmp_path / "d.txt"))) == ["a b\nc", "d"]
    assert list(iter_documents(str(tmp_path / "d.txt"), txt_mode="line")) == ["a b", "c", "d"]
    (tmp_path / "manifest.json").write_text("{}", encoding="utf-8")  # metadata beside the data is skipped
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    files = list_input_files(str(tmp_path))
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.jsonl", "b.json", "c.parquet", "d.txt"]
    stats = ReadStats()
    assert len(list(iter_all_documents(files, stats=stats))) == 8
    assert stats.documents == 8 and stats.empty == 2 and "8 documents" in stats.summary()


def test_text_field_variants(tmp_path):
    recs = [{"title": "T", "content": "C"}, {"title": None, "content": "only"}]
    path = _write_jsonl(tmp_path / "a.jsonl", recs)
    assert list(iter_documents(path, text_field="title+content")) == ["T\nC", "only"]
    assert list(iter_documents(path, text_field="content")) == ["C", "only"]
    pq.write_table(pa.table({"title": ["x"], "content": ["y"], "other": [3]}), tmp_path / "b.parquet")
    assert list(iter_documents(str(tmp_path / "b.parquet"), text_field="title+content")) == ["x\ny"]


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n{"text": 5}\n{"text": "fine"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2.*--skip_bad_records"):
        list(iter_documents(str(path)))
    stats = ReadStats()
    assert list(iter_documents(str(path), skip_bad_records=True, stats=stats)) == ["ok", "fine"]
    assert stats.bad_records == 2 and stats.per_file[str(path)].bad_records == 2
    assert "skipped 2 bad records" in stats.summary()


def test_bad_json(tmp_path):
    (tmp_path / "obj.json").write_text('{"text": "x"}', encoding="utf-8")
    with pytest.raises(ValueError, match="top-level array"):
        list(iter_documents(str(tmp_path / "obj.json")))
    (tmp_path / "trunc.json").write_text('[{"text": "a"}, {"text": "b"}, {"te', encoding="utf-8")
    with pytest.raises(ValueError, match=r"trunc\.json: after record 1.*--skip_bad_records"):
        list(iter_documents(str(tmp_path / "trunc.json")))
    stats = ReadStats()
    assert list(iter_documents(str(tmp_path / "trunc.json"), skip_bad_records=True, stats=stats)) == ["a", "b"]
    assert stats.bad_records == 1
    (tmp_path / "field.json").write_text('[{"body": "a"}]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"record 0.*'text' is missing.*body"):
        list(iter_documents(str(tmp_path / "field.json")))


def test_parquet_without_text_column_lists_columns(tmp_path):
    pq.write_table(pa.table({"body": ["a"], "id": [1]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match=r"x\.parquet: no column 'text'; available columns: body, id"):
        list(iter_documents(str(tmp_path / "x.parquet")))


def test_parquet_null_row_names_row_group(tmp_path):
    pq.write_table(pa.table({"text": ["a", "b", None]}), tmp_path / "n.parquet", row_group_size=2)
    with pytest.raises(ValueError, match=r"row group 1, row 0"):
        list(iter_documents(str(tmp_path / "n.parquet")))
    stats = ReadStats()
    assert list(iter_documents(str(tmp_path / "n.parquet"), skip_bad_records=True, stats=stats)) == ["a", "b"]
    assert stats.bad_records == 1


def test_corrupt_parquet_and_bad_utf8_txt(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"bad\.parquet: not a readable parquet file"):
        list(iter_documents(str(tmp_path / "bad.parquet")))
    (tmp_path / "bad.txt").write_bytes(b"good\n\xff\xfe bad\n")
    with pytest.raises(ValueError, match=r"bad\.txt: line 2: invalid UTF-8"):
        list(iter_documents(str(tmp_path / "bad.txt")))


def test_empty_inputs(tmp_path):
    with pytest.raises(ValueError, match="no input files"):
        list_input_files(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        list_input_files(str(tmp_path / "missing"))
    (tmp_path / "e.json").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        list(iter_documents(str(tmp_path / "e.json")))
    with pytest.raises(ValueError, match="txt_mode"):
        iter_documents(str(tmp_path / "e.json"), txt_mode="file")


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet"])
def test_memory_stays_flat(tmp_path, suffix):
    n, doc = 6000, "x" * 1000  # ~6 MB of text; streaming must hold only a small part of it
    path = tmp_path / f"big.{suffix}"
    if suffix == "jsonl":
        _write_jsonl(path, ({"text": doc} for _ in range(n)))
    elif suffix == "json":
        path.write_text(json.dumps([{"text": doc}] * n), encoding="utf-8")
    else:
        pq.write_table(pa.table({"text": [doc] * n}), path, row_group_size=1000)
    tracemalloc.start()
    count = sum(1 for _ in iter_documents(str(path)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == n
    assert peak < 3_000_000, f"peak Python memory {peak} bytes while streaming {path.stat().st_size} bytes"
