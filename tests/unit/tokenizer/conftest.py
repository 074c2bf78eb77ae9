"""Tiny tokenizers trained once per test session on a few KB of code, English and Chinese."""
import os
import sysconfig

import pytest

from tokenizer.train_tokenizer import train_bbpe, train_sentencepiece

_STD = sysconfig.get_paths()["stdlib"]
CORPUS = [open(os.path.join(_STD, name), encoding="utf-8").read()[:6000] for name in ("textwrap.py", "json/decoder.py")]
CORPUS += ["你好，世界。中文文本测试一下。我们来训练一个分词器，看看效果如何。" * 4,
           "Numbers like 1234567 and 3.14159 appear in text. The quick brown fox jumps over the lazy dog. " * 4]
SAMPLES = [
    "def f(x):\n    return x + 1  # comment\n\n\tTab  spaces   end  ",
    "Hello world, it's 2024-05-17 and 1234567 items cost $3.50!",
    "中文English混合 text，标点。 🙂 Ünïcödé naïve café",
    "  leading spaces and trailing newline\n",
]


@pytest.fixture(scope="session", params=["bbpe", "sentencepiece"])
def trained(request, tmp_path_factory):
    """(tokenizer, saved directory) for each tokenizer type."""
    if request.param == "bbpe":
        tok = train_bbpe(iter(CORPUS), 420, show_progress=False)
    else:
        tok = train_sentencepiece(iter(CORPUS), 420)
    out = tmp_path_factory.mktemp(request.param)
    tok.save_pretrained(str(out))
    return tok, str(out)
