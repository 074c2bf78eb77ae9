"""The Hugging Face export and import on a real full tmpfs: one line (exit 2), no temporary dir, the earlier export
kept, no half run left by the import, and both work again once space is back."""
import json
import os

import torch

from model import Z2allConfig, Z2allForCausalLM
from model.hf.export_hf import main as export_main
from model.hf.import_hf import import_hf
from model.hf.import_hf import main as import_main
from tests.support.disks import fill, needs_mount, tmpfs  # noqa: F401
from utils.cli import run_main

pytestmark = needs_mount


def _saved(tmp_path, seed):
    torch.manual_seed(seed)
    cfg = Z2allConfig(vocab_size=128, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=96,
                      max_seq_len=32)
    path = tmp_path / f"saved{seed}"
    Z2allForCausalLM(cfg).save_pretrained(path)
    return path


def test_an_export_on_a_full_disk_keeps_the_earlier_export(tmp_path, tmpfs, capsys):
    out = tmpfs(2) / "hf"
    assert run_main(export_main, [f"--ckpt={_saved(tmp_path, 0)}", f"--out_dir={out}"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    filler = fill(out.parent, leave=4096)
    capsys.readouterr()
    assert run_main(export_main, [f"--ckpt={_saved(tmp_path, 1)}", f"--out_dir={out}"]) == 2
    assert capsys.readouterr().err == (f"error: no space left on device while writing the Hugging Face export to {out}"
                                       f": free space there or choose another --out_dir (an earlier export there is "
                                       f"kept)\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(out.parent)) == sorted(["hf", filler.name])  # no .hf.tmp-* dir
    filler.unlink()
    assert run_main(export_main, [f"--ckpt={_saved(tmp_path, 1)}", f"--out_dir={out}"]) == 0


def test_an_import_on_a_full_disk_leaves_no_half_run(tmp_path, tmpfs, capsys):
    hf = tmp_path / "hf"
    assert run_main(export_main, [f"--ckpt={_saved(tmp_path, 0)}", f"--out_dir={hf}"]) == 0
    (hf / "tokenizer.json").write_text(json.dumps({"model": "x" * 10000}))
    disk = tmpfs(1)
    run = disk / "run"
    filler = fill(disk, leave=4096)
    assert run_main(import_main, [f"--hf_dir={hf}", f"--out_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: no space left on device while writing the imported checkpoint to {run}: free space there "
                   f"or choose another --out_dir\n"), err
    assert os.listdir(disk) == [filler.name]  # no run dir, so the same command can run again
    filler.unlink()
    ckpt = import_hf(hf, run)
    assert ckpt == run / "ckpt" / "step_000000000" and (run / "tokenizer" / "tokenizer.json").is_file()
    assert sorted(os.listdir(run)) == ["ckpt", "tokenizer"]
