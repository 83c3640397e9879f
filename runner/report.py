"""Per-target results, the fleet report, and the one place exit codes are decided."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from runner.names import iso, now  # noqa: F401  (rpt.now(), rpt.iso() are used across the runner)

# Exit codes (DESIGN.md, "CLI contract"); `runner --help` lists them from here.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHANGES = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    EXIT_OK: "every selected target succeeded (or is in sync)",
    EXIT_FAILED: "at least one target failed (or was blocked or not started)",
    EXIT_USAGE: "usage error or invalid registry: nothing was run",
    EXIT_CHANGES: "changes or drift detected (drift, preview --detailed-exitcode)",
    EXIT_LOCKED: "a target stayed locked by another live operation",
    EXIT_INTERRUPTED: "interrupted",
}


class Status(StrEnum):
    """A target's outcome; the values are the report's and the ledger's strings."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    NOT_STARTED = "not-started"
    LOCKED = "locked"
    BLOCKED = "blocked"
    IN_SYNC = "in-sync"
    DRIFTED = "drifted"
    PENDING = "pending"
    DRIFTED_PENDING = "drifted+pending"
    ERROR = "error"


class Operation(StrEnum):
    """What a job does to its stack (the report's and the ledger's `operation`)."""

    UP = "up"
    PREVIEW = "preview"
    REFRESH = "refresh"
    DESTROY = "destroy"
    DRIFT = "drift"
    ROLLBACK = "rollback"
    RECOVER = "recover"
    OUTPUTS = "outputs"


SUCCEEDED, FAILED, SKIPPED, NOT_STARTED, LOCKED, BLOCKED = (
    Status.SUCCEEDED,
    Status.FAILED,
    Status.SKIPPED,
    Status.NOT_STARTED,
    Status.LOCKED,
    Status.BLOCKED,
)
IN_SYNC, DRIFTED, PENDING, DRIFTED_PENDING, ERROR = (
    Status.IN_SYNC,
    Status.DRIFTED,
    Status.PENDING,
    Status.DRIFTED_PENDING,
    Status.ERROR,
)
FAILURES = {FAILED, ERROR, BLOCKED, NOT_STARTED}
CHANGED = {DRIFTED, PENDING, DRIFTED_PENDING}
STATUSES = tuple(Status)
TRANSIENT = "transient"  # an engine error kind worth another attempt (throttling, timeouts, resets)


@dataclass
class TargetResult:
    tenant: str | None
    environment: str
    stack: str
    operation: str
    status: str
    changes: dict[str, int] = field(default_factory=dict)
    started: datetime | None = None
    ended: datetime | None = None
    error: str | None = None
    error_resource: str | None = None
    error_component: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    error_kind: str | None = None  # the engine's classification (locked, transient, checkpoint, ...)
    attempts: int = 1  # engine runs of this target: more than one after transient errors (#17)

    @property
    def duration(self) -> float | None:
        if self.started and self.ended:
            return (self.ended - self.started).total_seconds()
        return None

    @property
    def error_line(self) -> str:
        """One line, attributed: `Backend (customer-1-backend-db): migration ... failed`."""
        if not self.error:
            return ""
        where = ""
        if self.error_component:
            where = self.error_component.rsplit(":", 1)[-1]
            if self.error_resource:
                where += f" ({self.error_resource.rsplit('::', 1)[-1]})"
            where += ": "
        return where + " ".join(self.error.split())

    @property
    def summary_line(self) -> str:
        """The error, or for drift which resources drifted and what is pending."""
        if self.error:
            return self.error_line
        parts = []
        for key, label in (("drift", "drifted"), ("pending", "pending")):
            steps = self.details.get(key) or []
            if steps:
                names = ", ".join(
                    f"{s['name']}"
                    + (f" [{', '.join(s['keys'])}]" if s.get("keys") else "")
                    + ("" if key == "drift" else f" ({s['op']})")
                    for s in steps
                )
                parts.append(f"{label}: {names}")
        behind = [
            b.get("note") or b.get("name", "") for b in self.details.get("behind") or [] if self.operation == "drift"
        ]
        if behind:  # not drift: what the target has not received yet
            parts.append(f"behind: {'; '.join(behind)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started"], data["ended"] = iso(self.started), iso(self.ended)
        data["duration_s"] = round(self.duration, 3) if self.duration is not None else None
        data["error"] = self.error_line or None
        data["error_message"] = self.error
        data["summary"] = self.summary_line or None
        return data


@dataclass
class Report:
    """Collects the outcome of every selected target; decides the exit code once."""

    run_id: str
    command: str
    release: str | None = None
    started: datetime = field(default_factory=now)
    ended: datetime | None = None
    targets: list[TargetResult] = field(default_factory=list)
    interrupted: bool = False
    detailed_exitcode: bool = False
    notes: list[str] = field(default_factory=list)
    waves: list[dict[str, Any]] = field(default_factory=list)
    # The shared stack's result when it was deployed first (`up`). Kept out of
    # `targets` and `counts` (tenant targets only), shown under its own key.
    shared: TargetResult | None = None
    # Run-level errors that are no single target's outcome (the ledger failed
    # mid-run): each is also a note, and any of them makes the exit code 1.
    errors: list[str] = field(default_factory=list)

    def add(self, result: TargetResult) -> TargetResult:
        self.targets.append(result)
        return result

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(t.status for t in self.targets)
        return {"total": len(self.targets), **{s: counts[s] for s in STATUSES if counts[s]}}

    @property
    def exit_code(self) -> int:
        # A row superseded by a later check of the same target (drift before
        # remediation) no longer decides the outcome.
        statuses = {t.status for t in self.targets if not t.details.get("superseded")}
        if self.interrupted:
            return EXIT_INTERRUPTED
        if statuses & FAILURES or self.errors:
            return EXIT_FAILED
        if LOCKED in statuses:
            return EXIT_LOCKED
        if statuses & CHANGED:
            return EXIT_CHANGES
        if self.detailed_exitcode and any(_has_changes(t.changes) for t in self.targets):
            return EXIT_CHANGES
        return EXIT_OK

    def rows(self) -> list[TargetResult]:
        """What the summaries show: the shared stack first (when not already a row), then the targets."""
        shared = [self.shared] if self.shared is not None and self.shared not in self.targets else []
        return shared + self.targets

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "release": self.release,
            "started": iso(self.started),
            "ended": iso(self.ended),
            "exit_code": self.exit_code,
            "counts": self.counts,
            "notes": self.notes,
            "errors": self.errors,
            "waves": self.waves,
            "targets": [t.to_dict() for t in self.targets],
            "shared": self.shared.to_dict() if self.shared is not None else None,
        }

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def write_junit(self, path: str | Path) -> None:
        Path(path).write_bytes(junit_xml(self))

    def markdown(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items() if k != "total")
        lines = [
            f"### runner {self.command}: {counts or 'nothing selected'}",
            "",
            f"Run `{self.run_id}`" + (f", release `{self.release}`" if self.release else ""),
            "",
            f"| target | status | changes | duration | {'findings / error' if self.command == 'drift' else 'error'} |",
            "| --- | --- | --- | --- | --- |",
        ]
        for t in self.rows():
            duration = f"{t.duration:.1f}s" if t.duration is not None else ""
            error = t.summary_line.replace("|", "\\|")
            lines.append(f"| {row_label(t, self)} | {t.status} | {format_changes(t.changes)} | {duration} | {error} |")
        return "\n".join(lines) + "\n"

    def write_step_summary(self) -> None:
        """Append the Markdown summary to $GITHUB_STEP_SUMMARY when set."""
        if path := os.environ.get("GITHUB_STEP_SUMMARY"):
            with open(path, "a") as handle:
                handle.write(self.markdown())


def row_label(result: TargetResult, report: Report) -> str:
    return f"{result.stack} (shared stack)" if result is report.shared else result.stack


def _has_changes(changes: dict[str, int]) -> bool:
    return any(v for k, v in changes.items() if k != "same")


def format_changes(changes: dict[str, int]) -> str:
    order = ("create", "update", "replace", "delete", "same")
    parts = [f"{changes[k]} {k}" for k in order if changes.get(k)]
    parts += [f"{v} {k}" for k, v in changes.items() if k not in order and v]
    return ", ".join(parts)


_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: str) -> str:
    """`value` with the characters XML 1.0 cannot hold (control characters, NUL,
    lone surrogates) written as visible `\\xNN` escapes, so the file stays parseable."""
    return _XML_INVALID.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", value
    )


def junit_xml(report: Report) -> bytes:
    """One testcase per target; failures carry the attributed error. Every string
    goes through `xml_text`: an error may hold any character."""
    failures = sum(
        t.status in (FAILURES - {NOT_STARTED}) | CHANGED | {LOCKED} and not t.details.get("superseded")
        for t in report.targets
    )
    skipped = sum(t.status in (SKIPPED, NOT_STARTED) for t in report.targets)
    total_time = sum(t.duration or 0 for t in report.targets)
    suite = ET.Element(
        "testsuite",
        {
            "name": f"runner {report.command}",
            "tests": str(len(report.targets)),
            "failures": str(failures),
            "errors": "0",
            "skipped": str(skipped),
            "time": f"{total_time:.3f}",
            "timestamp": iso(report.started) or "",
        },
    )
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", {"name": "run_id", "value": xml_text(report.run_id)})
    for t in report.targets:
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": xml_text(f"{report.command}.{t.tenant or 'untenanted'}"),
                "name": xml_text(t.stack),
                "time": f"{t.duration or 0:.3f}",
            },
        )
        if t.status in (SKIPPED, NOT_STARTED):  # never ran: not a failure of the target itself
            ET.SubElement(case, "skipped", {"message": xml_text(t.error_line or t.status)})
        elif t.status in FAILURES | CHANGED | {LOCKED} and not t.details.get("superseded"):
            failure = ET.SubElement(
                case, "failure", {"type": t.status, "message": xml_text(t.summary_line or t.status)}
            )
            failure.text = xml_text(
                json.dumps({k: v for k, v in t.details.items() if k in ("drift", "pending", "reason")}, indent=1)
            )
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="utf-8", xml_declaration=True)
