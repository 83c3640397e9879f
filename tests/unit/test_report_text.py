"""Reports survive any text (#15.4) and count/show the shared stack consistently (#22.8)."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

from click.testing import CliRunner
from rich.console import Console

from runner import cli, ops, progress
from runner import report as rpt
from runner.fleet import Job

NASTY = "cannot write [/tmp] [bold]x[/] \x1b[31mred\x00 \x07bell\x0b"


def _report(error: str = NASTY) -> rpt.Report:
    report = rpt.Report(run_id="run-[1]", command="up", notes=[f"note {error}"])
    report.add(rpt.TargetResult("t-0", "staging", "t-0.staging", "up", rpt.SUCCEEDED, changes={"update": 1}))
    report.add(rpt.TargetResult("t-1", "staging", "t-1.staging", "up", rpt.FAILED, error=error))
    return report


def _render(renderable) -> str:
    out = Console(file=io.StringIO(), width=400, highlight=False)
    out.print(renderable)
    return out.file.getvalue()


def test_markup_in_an_error_still_writes_every_report(monkeypatch, tmp_path):
    monkeypatch.setattr(ops, "fleet_run", lambda *a, **k: _report())
    sent = []
    monkeypatch.setattr("runner.notify.notify", lambda report, targets: sent.append(report) or [])
    step = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    result = CliRunner().invoke(
        cli.main,
        [
            "up",
            "--all-tenants",
            "--yes",
            "--json",
            "--junit",
            str(tmp_path / "j.xml"),
            "--report-json",
            str(tmp_path / "r.json"),
            "--notify",
            "webhook:https://hooks.example/x",
        ],
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert json.loads(result.stdout)["counts"]["failed"] == 1
    assert json.loads((tmp_path / "r.json").read_text())["targets"][1]["error_message"] == NASTY
    ET.parse(tmp_path / "j.xml")
    assert "t-1.staging" in step.read_text()
    assert len(sent) == 1
    assert "[/tmp]" in result.stderr and "[bold]x[/]" in result.stderr


def test_reports_are_written_even_when_the_terminal_summary_fails(monkeypatch, tmp_path):
    monkeypatch.setattr(ops, "fleet_run", lambda *a, **k: _report("plain"))

    def broken(report):
        raise RuntimeError("terminal gone")

    monkeypatch.setattr(progress, "print_summary", broken)
    result = CliRunner().invoke(
        cli.main,
        [
            "up",
            "--all-tenants",
            "--yes",
            "--json",
            "--junit",
            str(tmp_path / "j.xml"),
            "--report-json",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert (tmp_path / "r.json").exists() and (tmp_path / "j.xml").exists()
    assert json.loads(result.stdout)["run_id"] == "run-[1]"


def test_summary_table_shows_untrusted_text_and_drift_keys_verbatim():
    report = _report("see [/tmp] and [red]")
    report.add(
        rpt.TargetResult(
            "t-2",
            "staging",
            "t-2.staging",
            "drift",
            rpt.DRIFTED,
            details={"drift": [{"name": "site", "op": "update", "keys": ["domain", "tls"]}]},
        )
    )
    text = _render(progress.summary_table(report))
    assert "see [/tmp] and [red]" in text
    assert "site [domain, tls]" in text
    assert "run-[1]" in text


def test_junit_is_valid_xml_whatever_the_error_holds():
    suite = ET.fromstring(rpt.junit_xml(_report()))
    failure = suite.find("testcase[@name='t-1.staging']/failure")
    assert "[/tmp]" in failure.get("message") and "\x00" not in failure.get("message")


def test_live_and_line_progress_print_untrusted_text_as_is(capsys):
    result = rpt.TargetResult("t-1", "staging", "t-1.staging", "up", rpt.FAILED, error="boom [/tmp] [red]")
    job = Job("t-1", "staging", "t-1.staging", "up", {}, {})
    live = progress.LiveProgress("run-[1]", 1)
    live.view.console.file = io.StringIO()
    live.started(job)
    live.event(job, {"urn": "urn:pulumi:s::p::t::name[/x]", "op": "create", "phase": "start"})
    live.finished(result)
    live.note("a note [/tmp]")
    shown = live.view.console.file.getvalue()
    assert "boom [/tmp] [red]" in shown and "a note [/tmp]" in shown
    line = progress.LineProgress("run-1")
    line.finished(result)
    assert "boom [/tmp] [red]" in capsys.readouterr().err


# ---------------------------------------------------------------- #22.8: shared stack, progress, JUnit


def test_junit_marks_not_started_targets_skipped_not_failed():
    report = rpt.Report(run_id="r", command="up")
    report.add(rpt.TargetResult("a", "staging", "a.staging", "up", rpt.FAILED, error="boom"))
    report.add(rpt.TargetResult("b", "staging", "b.staging", "up", rpt.NOT_STARTED, error="the run was interrupted"))
    suite = ET.fromstring(rpt.junit_xml(report))
    assert suite.get("failures") == "1" and suite.get("skipped") == "1"
    skipped = suite.find("testcase[@name='b.staging']/skipped")
    assert skipped is not None and "interrupted" in skipped.get("message")
    assert suite.find("testcase[@name='b.staging']/failure") is None
    assert report.exit_code == rpt.EXIT_FAILED  # the exit code contract is unchanged


def test_the_shared_stack_is_in_the_summary_and_under_its_own_json_key():
    report = _report("plain")
    report.shared = rpt.TargetResult(None, "shared", "shared", "up", rpt.SUCCEEDED, changes={"same": 3})
    doc = report.to_dict()
    assert [t["stack"] for t in doc["targets"]] == ["t-0.staging", "t-1.staging"]
    assert doc["counts"]["total"] == 2
    assert doc["shared"]["stack"] == "shared" and doc["shared"]["status"] == rpt.SUCCEEDED
    text = _render(progress.summary_table(report))
    assert "shared (shared stack)" in text
    assert "shared" in report.markdown()
    assert rpt.Report(run_id="r", command="drift").to_dict()["shared"] is None


def test_live_progress_counts_tenant_targets_only_and_bars_show_steps():
    live = progress.LiveProgress("run-1", 2, operation="up")
    live.view.console.file = io.StringIO()
    overall = next(t for t in live.view.tasks if t.id == live.overall)
    shared = Job(None, "shared", "shared", "up", {}, {})
    live.started(shared)
    live.finished(rpt.TargetResult(None, "shared", "shared", "up", rpt.SUCCEEDED))
    assert (overall.completed, overall.total) == (0, 2)
    job = Job("t-1", "staging", "t-1.staging", "up", {}, {})
    recover = Job("t-1", "staging", "t-1.staging", "recover", {}, {})
    live.started(recover)  # the recovery step before an up is not a target of its own
    live.finished(rpt.TargetResult("t-1", "staging", "t-1.staging", "recover", rpt.SUCCEEDED))
    live.started(job)
    for op, phase in (("create", "start"), ("same", "start"), ("create", "done"), ("update", "start")):
        live.event(job, {"urn": f"urn:pulumi:s::p::t::{op}", "op": op, "phase": phase})
    bar = next(t for t in live.view.tasks if t.id == live.tasks["t-1.staging"])
    assert (bar.completed, bar.total) == (1, 3)
    assert overall.completed == 0
    live.finished(rpt.TargetResult("t-1", "staging", "t-1.staging", "up", rpt.LOCKED))
    live.started(job)  # a retry after a lock wait
    live.finished(rpt.TargetResult("t-1", "staging", "t-1.staging", "up", rpt.SUCCEEDED))
    assert overall.completed == 1


def test_line_progress_leaves_unchanged_resources_out(capsys):
    line = progress.LineProgress("run-1")
    job = Job("t-1", "staging", "t-1.staging", "up", {}, {})
    line.event(job, {"urn": "urn:pulumi:s::p::t::kept", "op": "same", "phase": "done"})
    line.event(job, {"urn": "urn:pulumi:s::p::t::made", "op": "create", "phase": "done"})
    err = capsys.readouterr().err
    assert "made" in err and "kept" not in err
