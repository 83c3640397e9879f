"""Progress display: a live view on a TTY, one line per event that matters in CI.

Every line carries the run id, tenant and environment (correlation ids);
``json`` log format writes one JSON object per line. All of it goes to stderr.
"""

from __future__ import annotations

import json
import sys
import threading

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

from runner import report as rpt
from runner.fleet import Job, Progress
from runner.names import SHARED_STACK, STATUS_STYLES

QUIET_OPS = ("same", "read")  # engine steps that change nothing


def console() -> Console:
    # CI logs are not terminals: give tables room instead of rich's 80 columns.
    width = None if sys.stderr.isatty() else 160
    return Console(stderr=True, highlight=False, soft_wrap=False, width=width)


class LineProgress(Progress):
    """Plain lines (CI) or JSON lines (`--log-format json`)."""

    def __init__(self, run_id: str, fmt: str = "text", verbose: bool = False):
        self.run_id, self.fmt, self.verbose = run_id, fmt, verbose
        self._lock = threading.Lock()

    def _line(self, job: Job | None, message: str, **extra) -> None:
        with self._lock:
            if self.fmt == "json":
                record = {
                    "run_id": self.run_id,
                    "tenant": job.tenant if job else None,
                    "environment": job.environment if job else None,
                    "stack": job.stack if job else None,
                    "message": message,
                    **extra,
                }
                sys.stderr.write(json.dumps(record) + "\n")
            else:
                where = f"{job.stack} {job.operation}: " if job else ""
                sys.stderr.write(f"[{self.run_id}] {where}{message}\n")
            sys.stderr.flush()

    def started(self, job: Job) -> None:
        self._line(job, "started")

    def event(self, job: Job, data: dict) -> None:
        if data.get("op") in QUIET_OPS and not self.verbose:  # unchanged resources: counted by the live view only
            return
        if "urn" in data and (self.verbose or data.get("phase") == "done"):
            name = data["urn"].rsplit("::", 1)[-1]
            self._line(job, f"{data['op']} {name} {data.get('phase')}", op=data["op"], urn=data["urn"])

    def finished(self, result: rpt.TargetResult) -> None:
        tail = f" ({rpt.format_changes(result.changes)})" if result.changes else ""
        error = f": {result.error_line}" if result.error else ""
        if result.error and result.details.get("log"):
            error += f" (log: {result.details['log']})"
        job = Job(result.tenant, result.environment, result.stack, result.operation, {}, {})
        self._line(job, f"{result.status}{tail}{error}", status=result.status)

    def note(self, message: str) -> None:
        self._line(None, message)


class LiveProgress(LineProgress):
    """A rich live view: one line per running target with its current step and
    resource steps done out of those the engine announced so far, and an
    overall bar of tenant targets done out of `total` (the shared stack and the
    recovery step before an operation have their own line but are not targets:
    the count matches the summary's `N target(s)`)."""

    def __init__(self, run_id: str, total: int, operation: str | None = None):
        super().__init__(run_id)
        self.operation = operation  # the run's operation: another one on a target (recover, rollback) is a sub-step
        self.done: set[str] = set()
        self.steps: dict[str, list[int]] = {}  # stack -> [done, announced]
        self.view = RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console(),
            transient=True,
        )
        self.overall = self.view.add_task(f"run {run_id}", total=total)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.view.start()
        return self

    def __exit__(self, *exc):
        self.view.stop()

    def started(self, job: Job) -> None:
        with self._lock:
            # task descriptions are rich markup: every untrusted part is escaped
            self.tasks[job.stack] = self.view.add_task(escape(f"{job.stack} {job.operation}: starting"), total=None)
            self.steps[job.stack] = [0, 0]
            if self._counts(job.stack, job.operation):
                self.done.discard(job.stack)  # a retry (after a lock wait) runs again
                self.view.update(self.overall, completed=len(self.done))

    def event(self, job: Job, data: dict) -> None:
        with self._lock:
            if "urn" in data and (task := self.tasks.get(job.stack)) is not None:
                steps = self.steps.setdefault(job.stack, [0, 0])
                if data.get("phase") == "start":  # the engine announced a step (resource pre event)
                    steps[1] += 1
                elif data.get("phase") == "done":  # the step's outputs event
                    steps[0] += 1
                if data.get("op") in QUIET_OPS:  # counted, not shown as the current step
                    self.view.update(task, completed=steps[0], total=max(steps))
                    return
                name = data["urn"].rsplit("::", 1)[-1]
                self.view.update(
                    task,
                    completed=steps[0],
                    total=max(steps),
                    description=escape(f"{job.stack} {job.operation}: {data['op']} {name}"),
                )

    def finished(self, result: rpt.TargetResult) -> None:
        with self._lock:
            if (task := self.tasks.pop(result.stack, None)) is not None:
                self.view.remove_task(task)
            if self._counts(result.stack, result.operation):
                self.done.add(result.stack)
                self.view.update(self.overall, completed=len(self.done))
            style = STATUS_STYLES.get(result.status, "")
            error = f": {result.error_line}" if result.error else ""
            line = Text(f"{result.stack} {result.operation} {result.status}", style=style)
            line.append(error)  # plain text: an error may hold anything, `[/tmp]` included
            if result.error and result.details.get("log"):
                line.append(f" (log: {result.details['log']})")
            self.view.console.print(line)

    def note(self, message: str) -> None:
        self.view.console.print(message, markup=False)

    def _counts(self, stack: str, operation: str) -> bool:
        """Whether a start/finish of `stack` is one of the run's tenant targets."""
        if stack == SHARED_STACK:
            return False
        return operation == self.operation if self.operation else operation != "recover"


def summary_table(report: rpt.Report) -> Table:
    # Untrusted strings (errors, drift keys `name [key]`, run ids) are Text, never markup.
    table = Table(title=Text(f"runner {report.command} (run {report.run_id})"), title_justify="left")
    # A dry run (sync --dry-run) runs nothing: its rows are plans, shown in their own column.
    planned = any(t.details.get("plan") for t in report.targets)
    last = "findings / error" if report.command == "drift" else "error"  # drift rows hold what was found
    columns = (
        ("target", "operation", "status", "plan", "changes", "duration", last)
        if planned
        else ("target", "operation", "status", "changes", "duration", last)
    )
    for column in columns:
        table.add_column(column, overflow="fold")
    for t in report.rows():  # the shared stack (when deployed) first, labelled
        duration = f"{t.duration:.1f}s" if t.duration is not None else ""
        plan = (Text(str(t.details.get("plan") or "")),) if planned else ()
        table.add_row(
            Text(rpt.row_label(t, report)),
            Text(t.operation),
            Text(t.status, style=STATUS_STYLES.get(t.status, "")),
            *plan,
            Text(rpt.format_changes(t.changes)),
            duration,
            Text(t.summary_line),
        )
    return table


def print_summary(report: rpt.Report) -> None:
    out = console()
    out.print(summary_table(report))
    counts = ", ".join(f"{v} {k}" for k, v in report.counts.items() if k != "total")
    out.print(f"{report.counts['total']} target(s): {counts or 'none'}; exit code {report.exit_code}", markup=False)
    for note in report.notes:
        out.print(note, markup=False)
