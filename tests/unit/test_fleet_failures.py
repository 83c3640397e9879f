"""A ledger failure mid-run never aborts the run (#15.9).

The worker process is replaced by a tiny script that answers like one (a
progress `begin`, then a result): what is under test is the orchestrator's
handling of the ledger, not the engine (tests/e2e drive the real one)."""

from __future__ import annotations

import json
import threading

import pytest

from runner import report as rpt
from runner.fleet import Job, RunSettings
from runner.plan import RunPlan
from runner.run import Run


class FlakyLedger:
    """Records like the real ledger; `record_end` of one stack raises, as a locked
    or read-only database does."""

    def __init__(self, failing_stack: str):
        self.failing_stack, self.ended, self.ops = failing_stack, [], {}
        self.lock = threading.Lock()

    def record_start(self, run_id, *, stack, **kw):
        with self.lock:
            self.ops[len(self.ops) + 1] = stack
            return len(self.ops)

    def record_end(self, op_id, status, **kw):
        if self.ops[op_id] == self.failing_stack:
            raise RuntimeError("(sqlite3.OperationalError) attempt to write a readonly database")
        self.ended.append((self.ops[op_id], status))

    def record(self, run_id, **kw):
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    def history(self, stack, limit=50):
        return []

    def run_operations(self, run_id):
        return []

    def finish_run(self, run_id, status, counts):
        pass


def run_all(fleet, ledger, jobs, settings, **plan_options):
    """What ops.fleet_run does with a plan: each step run by the fleet, recorded by the run."""
    run = Run(ledger, settings, run_id="run-1")
    run.execute(RunPlan(jobs, settings, **plan_options), fleet)
    return run.finish()


@pytest.fixture
def fleet(tmp_path, fleet_with_worker):
    ok = [
        json.dumps({"type": "progress", "phase": "begin"}),
        json.dumps({"type": "result", "ok": True, "changes": {"same": 2}, "outputs": {}}),
    ]
    failed = json.dumps(
        {"type": "result", "ok": False, "error": {"kind": "failed", "message": "boom", "urn": None, "component": None}}
    )
    throttled = json.dumps(
        {
            "type": "result",
            "ok": False,
            "error": {"kind": "transient", "message": "Throttling: Rate exceeded", "urn": None, "component": None},
        }
    )
    # `flaky` stacks are throttled on their first attempt (a marker file remembers it), then succeed
    marker = str(tmp_path / "throttled-once")
    script = (
        "import json, os, sys; job = json.load(sys.stdin); stack = job['stack']\n"
        f"if stack.startswith('flaky') and not os.path.exists({marker!r}):\n"
        f"    open({marker!r}, 'w').close(); print({throttled!r})\n"
        f"else:\n    print({failed!r} if stack.startswith('bad') else {chr(10).join(ok)!r})"
    )

    return fleet_with_worker(script)


def _jobs(*names):
    return [Job(n, "staging", f"{n}.staging", "preview", {}, {}) for n in names]


def test_a_ledger_error_while_recording_a_result_does_not_abort_the_run(fleet):
    ledger = FlakyLedger("b.staging")
    report = run_all(fleet, ledger, _jobs("a", "b", "c"), RunSettings(operation="preview", concurrency=2))

    assert [(t.stack, t.status) for t in report.targets] == [
        ("a.staging", rpt.SUCCEEDED),
        ("b.staging", rpt.SUCCEEDED),
        ("c.staging", rpt.SUCCEEDED),
    ]
    assert sorted(ledger.ended) == [("a.staging", rpt.SUCCEEDED), ("c.staging", rpt.SUCCEEDED)]
    assert any("ledger" in note and "readonly database" in note and "b.staging" in note for note in report.notes)
    assert report.errors and report.to_dict()["errors"] == report.errors
    assert report.exit_code == rpt.EXIT_FAILED


def test_a_ledger_error_while_recording_a_not_started_target_does_not_abort_the_run(fleet):
    fleet._stopping.set()  # as after an interrupt: every target is recorded not-started (ledger.record)
    report = run_all(fleet, FlakyLedger("none"), _jobs("a", "b"), RunSettings(operation="preview", concurrency=1))
    assert [t.status for t in report.targets] == [rpt.NOT_STARTED, rpt.NOT_STARTED]
    assert any("database is locked" in note for note in report.notes)


def test_a_ledger_error_while_planning_a_rollback_does_not_abort_the_run(fleet):
    def roll_back(job, result):
        raise RuntimeError("(sqlite3.OperationalError) unable to open database file")

    report = run_all(
        fleet,
        FlakyLedger("none"),
        _jobs("bad", "good"),
        RunSettings(operation="preview", concurrency=1, on_failure="rollback"),
        rollback=roll_back,
    )
    assert [(t.stack, t.status) for t in report.targets] == [
        ("bad.staging", rpt.FAILED),
        ("good.staging", rpt.SUCCEEDED),
    ]
    assert "unable to open database file" in report.targets[0].details["rollback"]


class RecordingLedger(FlakyLedger):
    def __init__(self):
        super().__init__("none")


def test_a_transient_error_is_retried_and_each_attempt_is_a_ledger_row(fleet):
    """#17: throttling is not a failure of the target; the retry is recorded, not hidden."""
    ledger = RecordingLedger()
    report = run_all(fleet, ledger, _jobs("flaky", "bad"), RunSettings(operation="preview", concurrency=1, retries=2))
    flaky, bad = report.targets
    assert (flaky.status, flaky.attempts) == (rpt.SUCCEEDED, 2)
    assert [a["error"] for a in flaky.details["attempts"]] == ["Throttling: Rate exceeded", None]
    assert flaky.to_dict()["attempts"] == 2
    assert ledger.ended.count(("flaky.staging", rpt.FAILED)) == 1 and ("flaky.staging", rpt.SUCCEEDED) in ledger.ended
    assert (bad.status, bad.attempts) == (rpt.FAILED, 1), "a permanent error is never retried"
    assert report.exit_code == rpt.EXIT_FAILED
