"""The CLI: one exit code per outcome, decided by Report; --json writes one document on stdout."""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from runner import cli, ops
from runner import report as rpt


def _report(*statuses: str, command: str = "up", **kw) -> rpt.Report:
    report = rpt.Report(run_id="run-1", command=command, **kw)
    for i, status in enumerate(statuses):
        report.add(
            rpt.TargetResult(
                f"t-{i}",
                "staging",
                f"t-{i}.staging",
                command,
                status,
                changes={"update": 1} if status == rpt.SUCCEEDED else {},
                error="boom" if status == rpt.FAILED else None,
            )
        )
    return report


@pytest.mark.parametrize(
    "statuses,code",
    [
        ((rpt.SUCCEEDED, rpt.SKIPPED), 0),
        ((rpt.SUCCEEDED, rpt.FAILED), 1),
        ((rpt.SUCCEEDED, rpt.BLOCKED), 1),
        ((rpt.SUCCEEDED, rpt.NOT_STARTED), 1),
        ((rpt.IN_SYNC, rpt.DRIFTED), 3),
        ((rpt.IN_SYNC, rpt.PENDING), 3),
        ((rpt.SUCCEEDED, rpt.LOCKED), 4),
        ((rpt.FAILED, rpt.LOCKED, rpt.DRIFTED), 1),
        ((rpt.LOCKED, rpt.DRIFTED), 4),
    ],
)
def test_exit_code_is_decided_by_the_report(monkeypatch, statuses, code):
    monkeypatch.setattr(ops, "fleet_run", lambda *a, **k: _report(*statuses))
    result = CliRunner().invoke(cli.main, ["up", "--all-tenants", "--yes"])
    assert result.exit_code == code, result.output


def test_detailed_exitcode_and_interrupt(monkeypatch):
    def preview(ctx, sel, settings, **kw):  # the report honours the option the CLI passed on
        return _report(rpt.SUCCEEDED, command="preview", detailed_exitcode=settings.detailed_exitcode)

    monkeypatch.setattr(ops, "fleet_run", preview)
    assert CliRunner().invoke(cli.main, ["preview", "--all-tenants", "--detailed-exitcode"]).exit_code == 3
    assert CliRunner().invoke(cli.main, ["preview", "--all-tenants"]).exit_code == 0  # changes, no option: 0
    monkeypatch.setattr(ops, "fleet_run", lambda *a, **k: _report(rpt.SUCCEEDED, interrupted=True))
    assert CliRunner().invoke(cli.main, ["up", "--all-tenants", "--yes"]).exit_code == 130


def test_json_stdout_is_one_document_and_human_text_goes_to_stderr(monkeypatch, tmp_path):
    monkeypatch.setattr(ops, "fleet_run", lambda *a, **k: _report(rpt.SUCCEEDED, rpt.FAILED))
    junit = tmp_path / "junit.xml"
    result = CliRunner().invoke(
        cli.main,
        ["up", "--all-tenants", "--yes", "--json", "--junit", str(junit), "--report-json", str(tmp_path / "r.json")],
    )
    doc = json.loads(result.stdout)  # nothing else on stdout
    assert {"run_id", "command", "counts", "targets"} <= set(doc)
    assert doc["counts"] == {"total": 2, "succeeded": 1, "failed": 1}
    for target in doc["targets"]:
        assert {"tenant", "environment", "stack", "status", "changes", "started", "ended", "error"} <= set(target)
    assert "t-1.staging" in result.stderr and "exit code 1" in result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["counts"] == doc["counts"]
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"


def test_tenants_validate_ok_and_broken(tmp_path):
    ok = CliRunner().invoke(cli.main, ["tenants", "validate"])
    assert ok.exit_code == 0 and ok.stderr.startswith("OK ")
    broken = tmp_path / "tenants.yaml"
    broken.write_text("environments: [{name: staging}]\ntenants:\n  - id: Bad_Id\n    environments: [prod]\n")
    result = CliRunner().invoke(cli.main, ["tenants", "validate", "--registry", str(broken)])
    assert result.exit_code == 2
    assert f"{broken}:3: tenants[0].id" in result.stderr
    assert f"{broken}:4: tenants[0].environments[0]: unknown environment 'prod'" in result.stderr
    assert "Traceback" not in result.output


def test_usage_errors_exit_2_before_anything_runs(monkeypatch):
    def never(*a, **k):
        raise AssertionError("the fleet must not run")

    monkeypatch.setattr("runner.fleet.Fleet.run_batch", never)
    runner = CliRunner()
    unknown = runner.invoke(cli.main, ["up", "--tenant", "custmer-1", "--yes"])
    assert unknown.exit_code == 2 and "did you mean 'customer-1'" in unknown.stderr
    assert runner.invoke(cli.main, ["up", "--all-tenants", "--shard", "3/3", "--yes"]).exit_code == 2
    assert runner.invoke(cli.main, ["destroy", "--all-tenants", "--yes"]).exit_code == 2
    assert runner.invoke(cli.main, ["up", "--all-tenants", "--notify", "irc:x", "--yes"]).exit_code == 2


def test_help_lists_every_exit_code():
    """`runner --help` lists exactly the codes and meanings of the README's table."""
    import re
    from pathlib import Path

    text = CliRunner().invoke(cli.main, ["--help"]).output
    section = text.split("\nExit codes:\n", 1)[1]
    listed: dict[int, str] = {}
    for line in section.splitlines():
        if match := re.fullmatch(r"  (\d+)\s+(.*)", line):
            code = int(match.group(1))
            listed[code] = match.group(2).strip()
        elif line.strip() and listed:  # a wrapped meaning
            listed[code] += " " + line.strip()
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("### Exit codes", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    documented = {
        int(m.group(1)): m.group(2).replace("`", "") for m in re.finditer(r"^\| (\d+) \| (.*?) \|$", table, re.M)
    }
    assert listed == documented == rpt.EXIT_CODES, (listed, documented)


class FakeFleet:
    """Stands in for the engine: records the batches it was asked to run; each target succeeds."""

    runs: list = []

    def __init__(self, project_dir, *, progress=None, **kw):
        self.master = "fake-master-passphrase"
        self.progress = progress

    def interruptible(self, report):
        return contextlib.nullcontext(self)

    def run_batch(self, jobs, run, policy=None):
        if jobs:
            FakeFleet.runs.append((run.settings.operation, [j.stack for j in jobs]))
        return [rpt.TargetResult(j.tenant, j.environment, j.stack, j.operation, rpt.SUCCEEDED) for j in jobs]


@pytest.fixture
def fake_fleet(monkeypatch, tmp_path):
    monkeypatch.setattr(ops, "Fleet", FakeFleet)
    monkeypatch.setenv("RUNNER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("RUNNER_REGISTRY", raising=False)
    monkeypatch.delenv("CUSTOMER_1_DB_PASSWORD", raising=False)
    FakeFleet.runs = []
    return FakeFleet.runs


def test_recover_without_selectors_covers_the_whole_fleet(fake_fleet):
    """#22.10: `runner recover` alone was refused ("select tenants with ...");
    it only clears provably dead locks, so no selector means every target, and
    it needs no tenant secret (it deploys nothing)."""
    result = CliRunner().invoke(cli.main, ["recover", "--json"])
    assert result.exit_code == 0, result.output
    assert [op for op, _ in fake_fleet] == ["recover"]
    assert sorted(fake_fleet[0][1]) == [
        "customer-1.production",
        "customer-1.staging",
        "customer-2.production",
        "customer-2.staging",
        "customer-3.production",
        "internal-qa.testing",
    ]
    assert json.loads(result.stdout)["counts"]["total"] == 6


def test_a_tag_alone_selects_tenants_on_the_command_line(fake_fleet):
    """#22.10: `--tag tier=standard` alone was refused."""
    result = CliRunner().invoke(cli.main, ["refresh", "--tag", "tier=standard", "--yes", "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(fake_fleet[0][1]) == ["customer-2.production", "customer-2.staging", "customer-3.production"]


def test_fleet_options_pass_through_to_run_settings_with_one_set_of_defaults(fake_fleet, monkeypatch):
    """#16: click options named like RunSettings fields go through as they are; an option
    not given keeps RunSettings' default (not a second default in the CLI)."""
    seen = []
    monkeypatch.setattr(
        ops, "fleet_run", lambda ctx, sel, settings, **k: seen.append(settings) or _report(rpt.SUCCEEDED)
    )
    for command in ("up", "preview", "refresh", "destroy", "drift", "rollback"):
        args = [
            command,
            "--tenant",
            "customer-1",
            "--retries",
            "4",
            *(["--yes"] if command not in ("preview", "drift") else []),
        ]
        result = CliRunner().invoke(cli.main, args)
        assert result.exit_code == 0, result.output
    assert [s.retries for s in seen] == [4] * 6 and [s.operation for s in seen][0] == "up"
    CliRunner().invoke(cli.main, ["up", "--tenant", "customer-1", "--on-failure", "stop", "--yes"])
    default = ops.RunSettings("up")
    assert (seen[-1].on_failure, seen[-1].retries, seen[-1].concurrency, seen[-1].lock_timeout) == (
        "stop",
        default.retries,
        default.concurrency,
        default.lock_timeout,
    )
