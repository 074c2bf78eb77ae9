"""bench/fp8_loss_plot.py: the comparison numbers and the plot from two metrics.jsonl files."""
import json

import pytest

from bench import fp8_loss_plot as flp


def _write(path, valid, loss=2.0):
    rows = [{"iter": s, "loss": loss} for s in (50, 100, 150, 200)]
    rows += [{"iter": s, "valid_loss": v} for s, v in valid]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_gap_and_plot(tmp_path):
    a = _write(tmp_path / "a.jsonl", [(100, 4.0), (200, 3.0)])
    b = _write(tmp_path / "b.jsonl", [(100, 4.2), (200, 3.015)])
    out = tmp_path / "p.png"
    assert flp.main(["--bf16", a, "--fp8", b, f"--out={out}"]) == 0
    got = flp.compare(flp.curves(a), flp.curves(b))
    assert got["step"] == 200 and got["final_gap"] == pytest.approx(0.005) and got["within_1pct"]
    assert got["max_abs_gap"] == pytest.approx(0.05) and not got["fp8_nonfinite"]
    assert out.stat().st_size > 1000


def test_runs_without_a_common_eval_are_refused(tmp_path):
    a = _write(tmp_path / "a.jsonl", [(100, 4.0)])
    b = _write(tmp_path / "b.jsonl", [(150, 4.0)])
    with pytest.raises(ValueError, match="share no evaluation step"):
        flp.compare(flp.curves(a), flp.curves(b))
