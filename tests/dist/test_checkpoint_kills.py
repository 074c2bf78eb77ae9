"""20 SIGKILLs, each landing inside a checkpoint write (or its pruning): every resume loads a complete
checkpoint that passes its checksums, and the final losses are bitwise those of an uninterrupted run."""
import json
import random
import time

import pytest

from tests.support.runs import command, kill_run, make_run, read_losses, run_cli, start
from utils.checkpoint import latest_checkpoint, verify_checkpoint

KILLS = 20
ARGS = ["--max_iters=30", "--save_interval=1", "--keep_last_n=2", "--eval_interval=0", "--attention_dropout=0",
        "--residual_dropout=0"]


def _section(out):
    try:
        return json.loads((out / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return {}


def kill_inside_a_save(proc, out, rng, timeout=60) -> bool:
    """SIGKILL the run a random 0-30 ms after its heartbeat enters a checkpoint section; False if it finished."""
    deadline = time.time() + timeout
    seen = _section(out).get("section_start")
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        hb = _section(out)
        if hb.get("section") == "checkpoint" and hb.get("section_start") != seen and hb.get("pid") == proc.pid:
            time.sleep(rng.uniform(0, 0.03))
            break
        time.sleep(0.001)
    kill_run(proc)
    return True


@pytest.mark.slow
def test_kills_inside_checkpoint_writes_never_break_a_resume(tmp_path):
    cfg_file, ref_args, ref_out = make_run(tmp_path, "ref")
    _, args, out = make_run(tmp_path, "killed")
    assert run_cli([cfg_file, *ref_args, *ARGS]).returncode == 0
    rng = random.Random(20)

    def launch():  # resume when a complete checkpoint exists, else start the run again
        has = (out / "ckpt").is_dir() and latest_checkpoint(out / "ckpt") is not None
        return [*args, "--resume"] if has else [cfg_file, *args, *ARGS]

    kills = 0
    while kills < KILLS and kill_inside_a_save(start(command(1, launch())), out, rng):
        kills += 1
        newest = latest_checkpoint(out / "ckpt") if (out / "ckpt").is_dir() else None
        assert newest is None or verify_checkpoint(newest)  # what the next resume loads passes its checksums
    assert kills == KILLS, f"the run finished after {kills} kills"
    final = run_cli(launch())
    assert final.returncode == 0, final.stderr[-3000:]
    assert read_losses(out) == read_losses(ref_out)
