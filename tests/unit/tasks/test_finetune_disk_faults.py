"""Fine-tuning's data writers through train.py on a real full tmpfs beside the data: the pretokenized SFT set and
the precomputed DPO reference table give one line and exit 2 before anything is written into the run, leave no
temporary file, and the same command works once space is back."""
import os
import shutil

from tests.support.disks import fill, needs_mount, tmpfs  # noqa: F401
from tests.support.finetune import make_finetune
import train

pytestmark = needs_mount


def _argv(ft, data, out, task, *extra):
    return [ft["config"], f"--task_type={task}", f"--init_from={ft['init']}", f"--data_dir={data}",
            f"--out_dir={out}", "--max_iters=2", "--eval_interval=0", *extra]


def _listing(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if not p.name.startswith(".fill"))


def test_sft_data_on_a_full_disk(tmp_path, tmpfs, capsys):
    ft = make_finetune(tmp_path)
    disk = tmpfs(1)
    data = shutil.copy(ft["sft"], disk / "sft.jsonl")
    filler = fill(disk)
    out = tmp_path / "run"
    assert train.main(_argv(ft, data, out, "sft")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: no space left on device while writing the pretokenized sft data to {data}.z2all-sft-96:"
                       f" free space there or choose another --out_dir (an earlier build there is kept)"), err
    assert _listing(disk) == ["sft.jsonl"] and not out.exists()  # nothing written into the run
    filler.unlink()
    assert train.main(_argv(ft, data, out, "sft")) == 0


def test_the_precomputed_dpo_reference_on_a_full_disk(tmp_path, tmpfs, capsys):
    ft = make_finetune(tmp_path)
    disk = tmpfs(1)
    data = shutil.copy(ft["dpo"], disk / "dpo.jsonl")
    out = tmp_path / "run"
    assert train.main(_argv(ft, data, tmp_path / "first", "dpo")) == 0  # pretokenizes beside the data
    before = _listing(disk)
    filler = fill(disk)
    capsys.readouterr()
    assert train.main(_argv(ft, data, out, "dpo", "--precompute_ref_logps")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: no space left on device while writing the precomputed DPO reference log-probs "
                              f"to {data}.z2all-dpo-96{os.sep}ref_logps-"), err
    assert err[-1].endswith("MB), or run without --precompute_ref_logps"), err
    assert _listing(disk) == before and not out.exists()  # no table, no .json, no temp file; nothing in the run
    filler.unlink()
    assert train.main(_argv(ft, data, out, "dpo", "--precompute_ref_logps")) == 0
    assert [n for n in os.listdir(f"{data}.z2all-dpo-96") if n.startswith("ref_logps-")]
