"""--concurrency auto (#17): the cores, more when the targets wait on a cloud API, bounded by memory."""

from __future__ import annotations

from click.testing import CliRunner

from runner import cli
from runner.fleet import TARGET_RSS_BYTES, Job, auto_concurrency

PLENTY = 64 * 2**30


def _jobs(n: int, **config) -> list[Job]:
    return [Job(f"t{i}", "staging", f"t{i}.staging", "up", {"platform": "local", **config}, {}) for i in range(n)]


def test_cpu_bound_targets_run_one_and_a_half_per_core():
    assert auto_concurrency(_jobs(50), cores=2, available=PLENTY)[0] == 3


def test_targets_waiting_on_a_cloud_api_run_several_per_core():
    assert auto_concurrency(_jobs(50, simulated_latency_ms=500), cores=2, available=PLENTY)[0] == 8
    assert auto_concurrency(_jobs(50, platform="aws"), cores=2, available=PLENTY)[0] == 8


def test_free_memory_and_the_number_of_targets_bound_it():
    chosen, why = auto_concurrency(_jobs(50, platform="aws"), cores=2, available=3 * TARGET_RSS_BYTES)
    assert chosen == 3 and "free memory for 3 targets" in why
    assert auto_concurrency(_jobs(1, platform="aws"), cores=2, available=PLENTY)[0] == 1
    assert auto_concurrency(_jobs(5), cores=2, available=0)[0] == 1  # never below one


def test_the_cli_accepts_a_number_or_auto_and_refuses_anything_else():
    option = next(p for p in cli.main.commands["up"].params if p.name == "concurrency")
    assert option.type.convert("auto", option, None) == "auto"
    assert option.type.convert("3", option, None) == 3
    for bad in ("0", "-1", "many"):
        result = CliRunner().invoke(cli.main, ["up", "--all-tenants", "--concurrency", bad])
        assert result.exit_code == 2 and "neither a number >= 1 nor auto" in result.output, result.output
