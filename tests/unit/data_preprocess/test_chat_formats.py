"""SFT/DPO record formats (messages, ShareGPT, Alpaca, preference pairs) and their errors, read through
readers.iter_records from .jsonl, .json and .parquet (file, line and what is wrong)."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_preprocess.chat_formats import detect_format, to_messages, to_preference
from data_preprocess.readers import ReadStats, iter_records
from tests.unit.dataset.sft_fixtures import write_jsonl

U, A, S = "user", "assistant", "system"


def _m(role, content):
    return {"role": role, "content": content}


def test_messages_sharegpt_alpaca():
    msgs = [_m(S, "sys"), _m(U, "q"), _m(A, "a")]
    assert to_messages({"messages": msgs}) == msgs
    share = {"system": "sys", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert detect_format(share) == "sharegpt" and to_messages(share) == msgs
    alpaca = {"instruction": "q", "input": "ctx", "output": "a", "system": "sys", "history": [["q0", "a0"]]}
    assert to_messages(alpaca) == [_m(S, "sys"), _m(U, "q0"), _m(A, "a0"), _m(U, "q\nctx"), _m(A, "a")]
    assert to_messages({"instruction": "q", "input": "", "output": "a"}) == [_m(U, "q"), _m(A, "a")]
    assert to_messages({"messages": msgs, "conversations": []}, fmt="messages") == msgs


def test_preference_standard_and_conversational():
    std = to_preference({"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert std.prompt == [_m(U, "q")] and std.chosen == _m(A, "good") and std.rejected == _m(A, "bad")
    conv = to_preference({"prompt": [_m(S, "s"), _m(U, "q"), _m(A, "a"), _m(U, "q2")],
                          "chosen": [_m(A, "good")], "rejected": [_m(A, "bad")]})
    assert conv.prompt[-1] == _m(U, "q2") and conv.chosen == std.chosen and conv.rejected == std.rejected


BAD_SFT = [
    ({"messages": [_m(U, "q")]}, "last message is 'user'"),
    ({"messages": [_m(U, "q"), _m(U, "q2"), _m(A, "a")]}, "message 1: role 'user' after 'user'"),
    ({"messages": [_m(A, "a")]}, "message 0: role 'assistant' after 'the start'"),
    ({"messages": [_m(U, "q"), _m(A, "  ")]}, "message 1: empty assistant turn"),
    ({"messages": [_m(U, 3), _m(A, "a")]}, "message 0: content is a int"),
    ({"messages": [_m(U, "q"), _m(A, "a"), _m(S, "s")]}, "message 2: a system message may only come first"),
    ({"messages": [_m("robot", "q")]}, "unknown role 'robot'"),
    ({"messages": "q"}, "field 'messages' must be a non-empty list"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "'from' is 'bot'"),
    ({"instruction": "q"}, "message 1: content is missing"),
    ({"text": "plain"}, "unknown record format (keys: text)"),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "not an SFT record; use --task=dpo"),
]


@pytest.mark.parametrize("record,what", BAD_SFT)
def test_bad_sft_record_names_file_line_and_what(tmp_path, record, what):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [_m(U, "q"), _m(A, "a")]}, record])
    with pytest.raises(ValueError) as e:
        list(iter_records(path, to_messages))
    assert str(e.value).startswith(f"{path}: line 2: ") and what in str(e.value), str(e.value)
    assert "--skip_bad_records" in str(e.value)


BAD_DPO = [
    ({"prompt": "q", "chosen": "a"}, "field 'rejected' is missing"),
    ({"prompt": "q", "chosen": [_m(A, "a"), _m(A, "b")], "rejected": "b"}, "list of one assistant message"),
    ({"prompt": "q", "chosen": [_m(U, "a")], "rejected": "b"}, "roles ['user']"),
    ({"prompt": "q", "chosen": "a", "rejected": ""}, "field 'rejected': empty assistant turn"),
    ({"prompt": "q", "chosen": 5, "rejected": "b"}, "field 'chosen' must be a non-empty list"),
    ({"prompt": [_m(U, "q"), _m(A, "a")], "chosen": "a", "rejected": "b"}, "must be a user turn"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "field 'prompt' is an empty string"),
]


@pytest.mark.parametrize("record,what", BAD_DPO)
def test_bad_preference_record(tmp_path, record, what):
    path = write_jsonl(tmp_path / "dpo.jsonl", [record])
    with pytest.raises(ValueError, match="dpo.jsonl: line 1: ") as e:
        list(iter_records(path, to_preference))
    assert what in str(e.value), str(e.value)


def test_skip_bad_records_counts_and_json_parquet_locations(tmp_path):
    good = {"messages": [_m(U, "q"), _m(A, "a")]}
    bad = {"messages": [_m(U, "q")]}
    path = tmp_path / "mix.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n\n" + json.dumps(bad) + "\n" + json.dumps(good) + "\n")
    stats = ReadStats()
    assert len(list(iter_records(str(path), to_messages, skip_bad_records=True, stats=stats))) == 2
    assert stats.documents == 2 and stats.bad_records == 2
    with pytest.raises(ValueError, match=r"mix.jsonl: line 2: bad JSON"):
        list(iter_records(str(path), to_messages))
    (tmp_path / "a.json").write_text(json.dumps([good, bad]))
    with pytest.raises(ValueError, match=r"a.json: record 1 \(0-based\): the last message"):
        list(iter_records(str(tmp_path / "a.json"), to_messages))
    pq.write_table(pa.table({"messages": [good["messages"], bad["messages"]]}), tmp_path / "c.parquet",
                   row_group_size=1)
    with pytest.raises(ValueError, match=r"c.parquet: row group 1, row 0: the last message"):
        list(iter_records(str(tmp_path / "c.parquet"), to_messages))
    assert list(iter_records(str(tmp_path / "c.parquet"), to_messages, skip_bad_records=True)) == [good["messages"]]
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(ValueError, match="records are read from"):
        list(iter_records(str(tmp_path / "t.txt"), to_messages))
