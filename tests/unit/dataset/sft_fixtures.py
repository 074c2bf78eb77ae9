"""Shared by the SFT/DPO tests: a tiny byte-level BPE tokenizer, record writers and conversations."""
import json
import os

from tests.unit.tokenizer.conftest import CORPUS
from tokenizer import Z2allTokenizer
from tokenizer.train_tokenizer import train_bbpe

CHATS = [
    [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def f(x): return x"},
     {"role": "assistant", "content": "Identity."}, {"role": "user", "content": "and g?"},
     {"role": "assistant", "content": "Also identity, 1234567 times."}],
    [{"role": "user", "content": "中文 text"}, {"role": "assistant", "content": "好的。 ok"}],
]


def tiny_tokenizer(out_dir) -> tuple[Z2allTokenizer, str]:
    """(tokenizer, its saved dir): a 420-token BBPE trained on a few KB (well under a second)."""
    out_dir = str(out_dir)
    if not os.path.isfile(os.path.join(out_dir, "z2all_tokenizer.json")):
        train_bbpe(iter(CORPUS), 420, show_progress=False).save_pretrained(out_dir)
    return Z2allTokenizer.from_pretrained(out_dir), out_dir


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)
