"""Train a tokenizer on files: `python -m data_preprocess.train_tokenizer --input=FILES_OR_DIR --vocab_size=N
--type=bbpe|sentencepiece --out_dir=DIR [--text_field=text|content|title+content] [--skip_bad_records]
[--max_chars=N]`.

The documents are streamed by data_preprocess.readers (.txt .json .jsonl .parquet); the training itself is
tokenizer.train_tokenizer (see it for the two tokenizer types). ``--type=spm`` is short for sentencepiece.
On success it prints the read counts and one JSON line (out_dir, sizes, special ids); a user mistake exits 2
with one line on stderr (utils.cli).
"""
from __future__ import annotations

import json
import sys

from data_preprocess.readers import TXT_MODES, ReadStats, iter_all_documents, list_input_files
from tokenizer import Z2allTokenizer
from tokenizer.tokenizer import TOKENIZER_TYPES
from tokenizer.train_tokenizer import check_train_args, train_tokenizer
from utils.cli import ArgumentParser, run_main

TYPE_ALIASES = {"spm": "sentencepiece"}


def train_from_files(inputs: str | list[str], vocab_size: int, type: str, out_dir: str, text_field: str = "text",
                     skip_bad_records: bool = False, max_chars: int = 0, txt_mode: str = "paragraph",
                     log=print) -> Z2allTokenizer:
    """Train on the documents of ``inputs`` (files and/or directories) and save to ``out_dir``; return it."""
    type = TYPE_ALIASES.get(type, type)
    check_train_args(vocab_size, type)  # before listing what may be a large tree
    files = list_input_files(inputs)
    stats = ReadStats()
    docs = iter_all_documents(files, text_field, skip_bad_records, stats, txt_mode)
    shown = inputs if isinstance(inputs, str) else ",".join(inputs)
    tok = train_tokenizer(docs, vocab_size, type, out_dir, max_chars,
                          source=f"--input={shown} (--text_field={text_field})")
    budget = f" (the first {max_chars:,} characters)" if max_chars else ""
    log(f"train_tokenizer: {stats.summary()}; trained on them{budget}")
    return tok


def main(argv: list[str] | None = None) -> Z2allTokenizer:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="files and/or directories, comma-separated")
    p.add_argument("--vocab_size", type=int, required=True, help="total vocabulary, special tokens included")
    p.add_argument("--type", default="bbpe", choices=TOKENIZER_TYPES + tuple(TYPE_ALIASES))
    p.add_argument("--out_dir", required=True)
    p.add_argument("--text_field", default="text", help='"text", "content", "title+content", or any field')
    p.add_argument("--txt_mode", default="paragraph", choices=TXT_MODES,
                   help=".txt files: one document per paragraph (blank-line separated) or per line")
    p.add_argument("--skip_bad_records", action="store_true", help="skip malformed records and count them")
    p.add_argument("--max_chars", type=int, default=0, help="train on at most the first N characters of the "
                   "input (0: all); bounds time, and memory for sentencepiece, on very large inputs")
    a = p.parse_args(argv)
    tok = train_from_files(a.input, a.vocab_size, a.type, a.out_dir, a.text_field, a.skip_bad_records,
                           a.max_chars, a.txt_mode)
    print(json.dumps({"out_dir": a.out_dir, "type": tok.type, "vocab_size": tok.vocab_size,
                      "model_vocab_size": tok.model_vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
                      "pad_id": tok.pad_id}), flush=True)
    return tok


if __name__ == "__main__":
    sys.exit(run_main(main))
