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
    calls = {"corpus": 0, "sft": 0}

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
        calls["sft"] += 1
        os.makedirs(out_dir, exist_ok=True)
        open(os.path.join(out_dir, "sft.jsonl"), "w").close()
        with open(os.path.join(out_dir, "sft_dpo_manifest.json"), "w") as f:
            json.dump({"version": fake.SFT_DPO_VERSION}, f)

    fake = types.ModuleType("data_preprocess.demo_corpus")
    fake.build_demo_corpus, fake.build_demo_sft_dpo = build_demo_corpus, build_demo_sft_dpo
    fake.SFT_DPO_VERSION = 7
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


def test_a_stale_sft_set_alone_is_rebuilt(tmp_path, fake_corpus):
    demo.ensure_demo_data(str(tmp_path / "demo"), vocab_size=300, num_workers=1, log=lambda m: None)
    assert fake_corpus == {"corpus": 1, "sft": 1}
    manifest = tmp_path / "demo" / "sft" / "sft_dpo_manifest.json"
    manifest.write_text(json.dumps({"version": 6}))  # a set from an older z2all
    msgs = []
    demo.ensure_demo_data(str(tmp_path / "demo"), vocab_size=300, num_workers=1, log=msgs.append)
    assert fake_corpus == {"corpus": 1, "sft": 2} and json.loads(manifest.read_text())["version"] == 7
    assert any("SFT/DPO set" in m for m in msgs) and not any("tokenizer" in m for m in msgs)


@pytest.fixture
def fake_corpus_with_kinds(monkeypatch):
    """A tiny corpus whose records name their kind, as demo_corpus writes them (code, then its prose)."""
    calls = {"corpus": 0}

    def build_demo_corpus(out_dir):
        import os
        calls["corpus"] += 1
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "demo_00000.jsonl")
        with open(path, "w") as f:
            for i in range(80):
                f.write(json.dumps({"text": f"def g{i}(a, b):\n    return a + b + {i}\n", "kind": "code"}) + "\n")
                f.write(json.dumps({"text": f"Add {i} to the sum of a and b.", "kind": "prose"}) + "\n")
        return [path]

    def build_demo_sft_dpo(out_dir):
        import os
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "sft_dpo_manifest.json"), "w") as f:
            json.dump({"version": fake.SFT_DPO_VERSION}, f)

    fake = types.ModuleType("data_preprocess.demo_corpus")
    fake.build_demo_corpus, fake.build_demo_sft_dpo, fake.SFT_DPO_VERSION = build_demo_corpus, build_demo_sft_dpo, 1
    monkeypatch.setitem(sys.modules, "data_preprocess.demo_corpus", fake)
    return calls


def test_the_demo_mix_splits_the_corpus_by_kind_and_is_reused(tmp_path, fake_corpus_with_kinds):
    from data_preprocess.pretokenize_sft import tokenizer_hash
    from dataset.format import open_bin

    msgs = []
    paths = demo.ensure_demo_mix(str(tmp_path / "demo"), vocab_size=300, num_workers=1, log=msgs.append)
    assert sorted(paths) == ["code", "prose"]
    demo_tok = str(tmp_path / "demo" / "tokenizer")
    tokens = {}
    for kind, path in paths.items():
        assert tokenizer_hash(f"{path}/tokenizer") == tokenizer_hash(demo_tok)  # one tokenizer for both sources
        tokens[kind] = sum(len(open_bin(p)) for p in __import__("pathlib").Path(path).glob("*.bin"))
    assert tokens["code"] > tokens["prose"] > 0
    msgs.clear()
    assert demo.ensure_demo_mix(str(tmp_path / "demo"), vocab_size=300, log=msgs.append) == paths and msgs == []
    (tmp_path / "demo" / "mix" / demo.MIX_MARKER).unlink()  # as if a build had been killed before its marker
    demo.ensure_demo_mix(str(tmp_path / "demo"), vocab_size=300, num_workers=1, log=msgs.append)
    assert any("mix's sources are ready" in m for m in msgs) and fake_corpus_with_kinds["corpus"] == 1
