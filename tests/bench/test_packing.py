"""bench/packing.py --dry_run: both cases run through the real model and print their JSON lines."""
import json

from bench import packing
from data_preprocess.pretokenize_sft import ensure_pretokenized
from tests.unit.dataset.sft_fixtures import tiny_tokenizer, write_jsonl


def test_dry_run(tmp_path, capsys):
    _, tdir = tiny_tokenizer(tmp_path / "tok")
    chats = [[{"role": "user", "content": "q " * (i % 9 + 1)}, {"role": "assistant", "content": "a " * (i % 4 + 1)}]
             for i in range(40)]
    src = write_jsonl(tmp_path / "sft.jsonl", [{"messages": c} for c in chats])
    data = ensure_pretokenized(src, tdir, str(tmp_path / "sft"), max_seq_len=64, progress=False, log=lambda *_: None)
    lines = packing.main(["--dry_run", f"--data_dir={data}", "--batch_size=2"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == lines and lines[0]["bench"] == "packing" and "torch" in lines[0] and "date" in lines[0]
    packed, padded = lines[1], lines[2]
    assert packed["case"] == "packed" and padded["case"] == "padded"
    assert packed["mean_row_tokens"] == 64 and all(0 < c["fill"] <= 1 and c["label_tokens_per_s"] > 0 for c in (packed, padded))
    assert lines[3]["ratio_label_tokens_per_s_packed_over_padded"] > 0
