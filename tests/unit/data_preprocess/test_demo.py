"""ensure_demo_data: builds once, reuses, rebuilds after a crash or a vocab change (with a tiny fake corpus)."""
import json
import sys
import types

import pytest

from data_preprocess import demo
from dataset.config import DataConfig
from dataset.pretrain import PretrainDataset


@pytest.fixture
def fake_corpus(monkeypatch):
    calls = {"corpus": 0}

    def build_demo_corpus(out_dir):
        calls["corpus"] += 1
        import os
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "code.jsonl")
        with open(path, "w") as f:
            for i in range(80):
                f.write(json.dumps({"text": f"def g{i}(a, b):\n    '''Add {i}.'''\n    return a + b + {i}\n"}) + "\n")
        return [path]

    def build_demo_sft_dpo(out_dir):
        import os
        os.makedirs(out_dir, exist_ok=True)
        open(os.path.join(out_dir, "sft.jsonl"), "w").close()

    fake = types.ModuleType("data_preprocess.demo_corpus")
    fake.build_demo_corpus, fake.build_demo_sft_dpo = build_demo_corpus, build_demo_sft_dpo
    monkeypatch.setitem(sys.modules, "data_preprocess.demo_corpus", fake)
    return calls


def test_build_reuse_and_rebuild(tmp_path, fake_corpus, monkeypatch):
    msgs = []
    data = demo.ensure_demo_data(str(tmp_path / "demo"), vocab_size=300, num_workers=1, log=msgs.append)
    assert any("ready" in m for m in msgs) and fake_corpus["corpus"] == 1
    ds = PretrainDataset(DataConfig(data_dir=data.data_dir), 16, 320, log=lambda m: None)
    assert len(ds) > 10
    msgs.clear()
    again = demo.ensure_demo_data(str(tmp_path / "demo"), vocab_size=300, log=msgs.append)
    assert again == data and msgs == []
    (tmp_path / "demo" / demo.MARKER).unlink()  # as if the last build crashed before finishing
    real_build = demo._build
    monkeypatch.setattr(demo, "_build", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        demo.ensure_demo_data(str(tmp_path / "demo"), vocab_size=300, log=msgs.append)  # rebuilds, not reuses
    monkeypatch.setattr(demo, "_build", real_build)
    demo.ensure_demo_data(str(tmp_path / "demo"), vocab_size=320, num_workers=1, log=msgs.append)
    meta = json.loads((tmp_path / "demo" / demo.MARKER).read_text())
    assert meta["vocab_size"] == 320 and fake_corpus["corpus"] == 1  # the corpus stage was reused
