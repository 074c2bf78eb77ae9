"""bench/exit_abort.py without running its loaded runs: it imports, its arguments, and the environment its lines carry."""
import json

import bench.exit_abort as b
from bench.slow_link import environment


def test_it_imports_and_takes_its_arguments():
    args, extra = b.parse_args(["--runs=3", "--hogs=1", "--", "--batch_size=2"])
    assert (args.runs, args.hogs) == (3, 1) and extra == ["--batch_size=2"]


def test_the_environment_names_the_device_date_and_versions():
    env = environment()
    assert env["device"].startswith("cpu: ") and env["device"].endswith(" cores")
    assert env["date"][:4].isdigit() and env["torch"] and env["python"].count(".") == 2
    json.dumps(env)
