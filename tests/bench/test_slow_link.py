"""bench/slow_link.py without root or a link: its commands (dry run), arguments, the timed intervals, the bytes
per step and the comparisons."""
import json

import pytest

import bench.slow_link as b


def test_dry_run_prints_the_namespace_the_cases_and_the_cleanup(capsys):
    assert b.main(["--dry_run", "--rate_mbit=50", "--ranks=4", "--", "--batch_size=2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    ns = lines[0].split()[-1]
    assert lines[0] == f"ip netns add {ns}" and ns.startswith("z2slow")
    assert "mtu 1500" in lines[2] and "tbf rate 50mbit burst 64kb latency 100ms" in lines[3]
    runs = lines[4:-1]
    assert [line.split("--out_dir=<tmp>/")[1].split()[0] for line in runs] == [
        "no_comm", "allreduce", "bf16_allreduce", "powersgd_r4"]
    assert all(line.startswith(f"ip netns exec {ns} env GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1") for line in runs)
    assert "--nproc_per_node=1" in runs[0] and "--gradient_accumulation_steps=1" in runs[0]
    assert "--nproc_per_node=2" in runs[3] and "--powersgd_rank=4" in runs[3] and runs[3].endswith("--batch_size=2")
    assert lines[-1] == f"ip netns del {ns}"


def test_args_are_checked():
    args, extra = b.parse_args(["--cases=allreduce,powersgd_r2", "--", "--hidden_dim=64"])
    assert args.case_list == ["allreduce", "powersgd_r2"] and extra == ["--hidden_dim=64"]
    for bad in (["--cases=nope"], ["--ranks=0"], ["--ranks=a"], ["--steps=6", "--log_interval=5"]):
        with pytest.raises(SystemExit):
            b.parse_args(bad)


def test_timed_intervals_skip_the_first_and_the_warm_up():
    recs = [{"iter": i, "ms_per_iter": float(i), "tokens_per_s": 1.0, "loss": 1.0} for i in (5, 10, 15, 20)]
    recs.insert(2, {"iter": 10, "valid_loss": 2.0})
    assert [r["iter"] for r in b.timed_intervals(recs, 0)] == [10, 15, 20]
    assert [r["iter"] for r in b.timed_intervals(recs, 10)] == [15, 20]
    args, _ = b.parse_args(["--powersgd_start_iter=10", "--steps=20"])
    assert b.summarize("powersgd_r4", recs, args)["ms_per_iter"] == 17.5
    assert b.summarize("allreduce", recs, args)["ms_per_iter"] == 15.0


def test_bytes_per_step_follow_the_hooks():
    args, _ = b.parse_args([])
    argvs = {c: b.train_argv(c, args, ["--vocab_size=256", "--hidden_dim=64", "--n_layers=1"], "/tmp/x")[1]
             for c in ("no_comm", "allreduce", "bf16_allreduce", "powersgd_r4")}
    sizes = {c: b.bytes_per_step(c, argv) for c, argv in argvs.items()}
    assert sizes["no_comm"] == 0 and sizes["allreduce"] == 2 * sizes["bf16_allreduce"]
    assert 0 < sizes["powersgd_r4"] < sizes["allreduce"] / 4


def test_comparisons_and_targets():
    res = [{"case": "no_comm", "ms_per_iter": 100.0, "tokens_per_s": 1000.0, "loss": 5.0, "rate_mbit": 10},
           {"case": "allreduce", "ms_per_iter": 600.0, "tokens_per_s": 300.0, "loss": 4.0, "rate_mbit": 10},
           {"case": "powersgd_r4", "ms_per_iter": 120.0, "tokens_per_s": 1500.0, "loss": 4.08, "rate_mbit": 10}]
    summary = b.add_comparisons(res)
    assert res[1]["vs_no_comm"] == 6.0 and res[2]["loss_vs_allreduce"] == pytest.approx(1.02)
    assert summary["link_bound"] and summary["target_met"] and summary["powersgd_r4_tokens_vs_allreduce"] == 5.0
    json.dumps(summary)


def test_time_to_loss_args_and_commands(capsys):
    args, _ = b.parse_args(["--time_to_loss"])
    assert (args.steps, args.ranks, args.timeout_s, args.budget_frac) == (300, "4,8,16", 7200, 1 / 3)
    assert args.case_list == ["allreduce", "bf16_allreduce", "powersgd_r4_w10", "powersgd_r8_w10", "powersgd_r16_w10"]
    args, _ = b.parse_args(["--time_to_loss", "--ranks=16", "--warmup_frac=0.1,0.03"])
    assert args.case_list == ["allreduce", "bf16_allreduce", "powersgd_r16_w10", "powersgd_r16_w3"]
    assert b.warmup_fraction("powersgd_r16_w3") == 0.03 and b.warmup_fraction("bf16_allreduce") == 0.0
    for bad in (["--steps=310"], ["--cases=powersgd_r4_w10"], ["--warmup_frac=1"], ["--warmup_frac=x"],
                ["--budget_frac=0"], ["--calib_steps=4"]):
        with pytest.raises(SystemExit):
            b.parse_args(["--time_to_loss", *bad])
    assert b.main(["--time_to_loss", "--dry_run", "--steps=40", "--eval_every=10", "--ranks=8"]) == 0
    runs = capsys.readouterr().out.strip().splitlines()[4:-1]
    assert len(runs) == 3
    # each flag once: the time-to-loss settings replace the step-timing ones
    assert all(len(set(a.split("=")[0] for a in r.split())) == len(r.split()) for r in runs)
    assert runs[0].endswith("--comm_hook=allreduce --max_iters=40 --log_interval=10 --eval_interval=10 "
                            "--save_interval=40")
    # the other cases' steps and warm-up are decided by the budget once the step times are measured
    assert "--powersgd_rank=8 --max_iters=N --log_interval=10 --eval_interval=10 --save_interval=N " \
           "--powersgd_start_iter=W" in runs[2]
    # the step-time run: compression from the first step, no validation
    _, calib = b.ttl_argv("powersgd_r8_w10", args, [], "/tmp/c", 15, 0, 0)
    assert "--max_iters=15" in calib and "--eval_interval=0" in calib and "--powersgd_start_iter=0" in calib


def test_loss_curve_sums_the_log_intervals():
    recs = [{"iter": 0, "valid_loss": 9.0}, {"iter": 10, "ms_per_iter": 100.0, "loss": 5.0},
            {"iter": 10, "valid_loss": 4.0}, {"iter": 20, "ms_per_iter": 300.0, "loss": 4.0},
            {"iter": 20, "valid_loss": 3.5}, {"iter": 30, "ms_per_iter": 200.0, "loss": 3.0}]
    assert b.loss_curve(recs) == [(0, 0.0, 9.0), (10, 1.0, 4.0), (20, 4.0, 3.5)]


def test_steps_fit_the_budget_with_the_warm_up_at_all_reduce_speed():
    # 100 s: 10 % of the steps at 4 s, the rest at 0.5 s -> 100 / 0.85 = 117 steps -> 100 (validations every 20)
    assert b.plan_steps(100.0, 0.1, 4.0, 0.5, 20) == 100
    assert b.plan_steps(100.0, 0.0, 4.0, 0.5, 20) == 200
    assert b.plan_steps(1.0, 0.0, 4.0, 0.5, 20) == 20  # at least one validation


def test_time_to_target_and_summary():
    args, _ = b.parse_args(["--time_to_loss", "--steps=20", "--eval_every=10", "--budget_frac=0.5"])
    ar = b.ttl_result("allreduce", [(10, 50.0, 4.0), (20, 100.0, 3.0)], 3.0, 100.0)
    slow = b.ttl_result("powersgd_r4_w10", [(10, 20.0, 3.6), (20, 40.0, 3.2), (30, 50.0, 3.1)], 3.0, 100.0)
    fast = b.ttl_result("powersgd_r8_w10", [(10, 15.0, 3.4), (20, 30.0, 2.9), (30, 48.0, 2.8)], 3.0, 100.0)
    assert ar["time_to_target_s"] == 100.0 and ar["time_vs_allreduce"] == 1.0
    assert slow["valid_loss"] == 3.1 and slow["time_to_target_s"] is None and slow["steps"] == 30
    assert fast["valid_loss"] == 2.8 and fast["time_vs_allreduce"] == 0.3
    summary = b.ttl_summary([ar, slow, fast], args)
    assert summary["target_loss"] == 3.0 and summary["budget_s"] == 50.0 and summary["best"] == "powersgd_r8_w10"
    assert summary["target_met"] and json.dumps(summary)
    assert not b.ttl_summary([ar, slow], args)["target_met"]


def test_a_reference_run_gives_the_target_instead_of_training_allreduce_again(tmp_path):
    with pytest.raises(SystemExit):
        b.parse_args(["--time_to_loss", "--cases=powersgd_r16_w10"])
    ref = tmp_path / "ref.jsonl"
    ref.write_text(json.dumps({"case": "allreduce", "curve": [[20, 80.0, 6.0], [40, 160.0, 5.5]]}) + "\n"
                   + json.dumps({"summary": "slow_link_time_to_loss"}) + "\n")
    args, _ = b.parse_args(["--time_to_loss", "--cases=powersgd_r16_w10", f"--reference={ref}"])
    assert args.case_list == ["powersgd_r16_w10"]
    assert b.reference_curve(str(ref)) == [(20, 80.0, 6.0), (40, 160.0, 5.5)]
    (tmp_path / "none.jsonl").write_text(json.dumps({"case": "bf16_allreduce"}) + "\n")
    with pytest.raises(SystemExit, match="no allreduce line"):
        b.reference_curve(str(tmp_path / "none.jsonl"))
