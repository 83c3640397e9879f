"""One run: its report and every ledger write of it.

Statuses and operations reach the ledger as plain strings (str() of the
StrEnums): a database driver never sees an enum.

The ledger is the record other runs read (lifecycle gates, rollback points,
--skip-unchanged, `runner status`); a failure to write it (database locked,
read-only, unreachable) never aborts a run: it becomes a note and a run
error of the report (exit 1). Every ledger call of a run goes through here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from runner import report as rpt
from runner.fleet import SHARED_STACK, Job, RunSettings


class Run:
    """The report of one run and its rows in the ledger (``ledger`` None: nothing recorded)."""

    def __init__(
        self,
        ledger,
        settings: RunSettings,
        *,
        run_id: str | None = None,
        release: str | None = None,
        report: rpt.Report | None = None,
    ):
        self.ledger, self.settings = ledger, settings
        self.report = report or rpt.Report(
            run_id=run_id or settings.run_id,
            command=settings.operation,
            release=release,
            detailed_exitcode=settings.detailed_exitcode,
        )
        self._lock = threading.Lock()
        self._errors: list[str] = []

    @property
    def run_id(self) -> str:
        return self.report.run_id

    @property
    def release(self) -> str | None:
        return self.report.release

    # ------------------------------------------------------------------ the run

    def mark_interrupted(self) -> None:
        """Before anything reads the ledger: rows a killed runner left `running` on this host
        become interrupted (their targets are recovered first, and count as failed)."""
        if self.ledger is not None:
            self.ledger.mark_interrupted_runs()

    def begin(self, *, shard: str | None = None) -> None:
        """The run's row in the ledger."""
        if self.ledger is None:
            return
        self.ledger.start_run(
            self.run_id,
            self.report.command,
            argv=list(self.settings.argv),
            release=self.release,
            shard=shard,
            options={"concurrency": self.settings.concurrency},
        )

    def finish(self, *, close_row: bool = True) -> rpt.Report:
        """Close the run's row (unless `close_row` is False: more work recorded under a finished
        run); ledger failures of the run become notes and run errors (exit 1)."""
        if self.ledger is not None and close_row:
            self._call(
                "finishing the run",
                self.ledger.finish_run,
                self.run_id,
                "interrupted" if self.report.interrupted else "finished",
                self.report.counts,
            )
        with self._lock:
            errors, self._errors = self._errors, []
        self.report.notes.extend(errors)
        self.report.errors.extend(errors)
        self.report.ended = self.report.ended or rpt.now()
        return self.report

    def execute(self, plan, executor) -> rpt.Report:
        """Carry out a RunPlan: each step's refused targets recorded, its batch run by the
        executor (runner.fleet.Fleet, or a fake in tests), its results read by the plan."""
        for step in plan:
            for result in step.refused:
                self.record(result)
            results = executor.run_batch(step.jobs, self, plan)
            self.add(results)
            plan.done(step, results)
        self.report.waves += plan.waves
        self.report.notes += plan.notes
        return self.report

    # ------------------------------------------------------------------ the report

    def add(self, results: Iterable[rpt.TargetResult]) -> None:
        """Results into the report, in order: the shared stack's under its own key (and
        as a row when it did not succeed: it decides the exit code)."""
        for result in results:
            if result.stack == SHARED_STACK:
                self.report.shared = result
                if result.status == rpt.SUCCEEDED:
                    continue
            self.report.add(result)

    def record(self, result: rpt.TargetResult) -> rpt.TargetResult:
        """A target that never ran (skipped, blocked, not started): the report and one ledger row."""
        self.report.add(result)
        self.log(result)
        return result

    # ------------------------------------------------------------------ ledger writes

    def log(self, result: rpt.TargetResult) -> None:
        """One finished ledger row for a target that never ran."""
        if self.ledger is None:
            return
        self._call(
            f"recording the result of {result.stack}",
            self.ledger.record,
            self.run_id,
            tenant=result.tenant,
            environment=result.environment,
            stack=result.stack,
            operation=str(result.operation),
            status=str(result.status),
            release=self.release,
            error=result.error,
            details=result.details,
        )

    def start(self, job: Job, *, started=None):
        """The ledger row of one attempt of `job`, running; its id (None without a ledger)."""
        if self.ledger is None:
            return None
        return self._call(
            f"recording the start of {job.stack}",
            self.ledger.record_start,
            self.run_id,
            tenant=job.tenant,
            environment=job.environment,
            stack=job.stack,
            operation=str(job.operation),
            started=started,
            release=job.config.get("release") or self.release,
            program_commit=job.program_commit,
            config_fingerprint=job.config_fingerprint,
            config_snapshot=dict(job.config),
        )

    def end(self, op_id, job: Job, result: rpt.TargetResult, *, ended=None) -> None:
        """The outcome of that attempt. The ledger keeps the program's fingerprint with it:
        a later rollback runs the checkout only when it is that very program."""
        if self.ledger is None or op_id is None:
            return
        details = {
            **result.details,
            **({"program_fingerprint": job.program_fingerprint} if job.program_fingerprint else {}),
        }
        self._call(
            f"recording the result of {result.stack}",
            self.ledger.record_end,
            op_id,
            str(result.status),
            changes=result.changes,
            error=result.error,
            error_resource=result.error_resource,
            error_component=result.error_component,
            details=details,
            ended=ended,
        )

    # ------------------------------------------------------------------ ledger reads during the run

    def read(self, what: str, method, *args, default=None, **kwargs):
        """A ledger read that cannot abort the run: a failure is collected, `default` returned."""
        if self.ledger is None:
            return default
        return self._call(what, method, *args, default=default, **kwargs)

    def history(self, stack: str, limit: int = 1) -> list:
        return self.read(
            f"reading the history of {stack}", getattr(self.ledger, "history", None), stack, limit=limit, default=[]
        )

    def operations(self) -> list:
        """This run's rows so far (all shards)."""
        return self.read(
            f"reading this run's {SHARED_STACK} rows",
            getattr(self.ledger, "run_operations", None),
            self.run_id,
            default=[],
        )

    def _call(self, what: str, method, *args, default=None, **kwargs) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any driver error; the report says which
            message = (
                f"ledger error while {what}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
                f"(this report holds the outcome; the next run marks unfinished ledger rows interrupted)"
            )
            with self._lock:
                self._errors.append(message)
            return default
