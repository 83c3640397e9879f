"""Fleet status: a tenants x environments grid built from the ledger alone.

``runner status`` never calls the engine: the ledger is the truth about what
was deployed when (DESIGN.md).  :func:`fleet_status` reads it with two
queries whatever the fleet's size (:meth:`Ledger.latest_by_stack` for the
deployments, once more for the drift checks) and joins them with the registry
in memory:

* a cell per tenant and environment: the latest deployment (``up``,
  ``rollback`` or ``destroy``: release, status, when), the last drift check
  (status, when, drifted resources, pending operations) and the last error
  line;  ``n/a`` where the tenant is not connected to the environment,
  ``never`` where it is but nothing was ever deployed;
* the stacks the ledger knows that the registry no longer lists (offboarded
  or orphaned tenants), and the untenanted ones (the shared stack).

Outputs: :meth:`FleetStatus.to_dict` (``--json``), :func:`render_table` (the
terminal) and :func:`write_html` (one self-contained HTML page).

Only what is listed above leaves this module: never a tenant's config or
secrets, nor a row's config snapshot.  The registry is used through duck
typing (``tenants`` with ``id``, ``name``, ``environments``, ``tags``,
``enabled``; ``environment_names``), so callers and tests can pass fakes.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from runner import names
from runner.names import DEPLOYMENT_OPERATIONS, SHARED_STACK, iso, utc
from runner.names import STATUS_STYLES as _LEDGER_STYLES
from runner.report import TargetResult

__all__ = [
    "NEVER",
    "NOT_CONNECTED",
    "DESTROYED",
    "Cell",
    "DriftSummary",
    "TenantRow",
    "FleetStatus",
    "fleet_status",
    "format_age",
    "render_table",
    "render_orphans_table",
    "render_html",
    "write_html",
]

DRIFT_OPERATION = "drift"

#: Cell states that are not ledger statuses.
NOT_CONNECTED = "n/a"  # the tenant is not connected to this environment
NEVER = "never"  # connected, but no deployment recorded
DESTROYED = "destroyed"  # the latest deployment is a succeeded destroy

#: How many drifted/pending resource names a summary line shows.
SUMMARY_NAMES = 5

#: Ledger statuses, then the cell states above.
STATUS_STYLES = {
    **_LEDGER_STYLES,
    DESTROYED: "bright_black",
    NEVER: "bright_black",
    NOT_CONNECTED: "dim",
}


# --------------------------------------------------------------------------
# helpers


def _iso(value: datetime | None) -> str | None:
    return iso(value, timespec="seconds")


def format_age(seconds: float | None) -> str:
    """``45s``, ``12m``, ``3h``, ``5d``, ``2y``; ``""`` when unknown."""
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _error_line(row: Any) -> str | None:
    """The attributed one-line error, formatted exactly like the reports'."""
    if not getattr(row, "error", None):
        return None
    return (
        TargetResult(
            tenant=row.tenant,
            environment=row.environment or "",
            stack=row.stack,
            operation=row.operation,
            status=row.status,
            error=row.error,
            error_resource=row.error_resource,
            error_component=row.error_component,
        ).error_line
        or None
    )


def _short_component(component: Any) -> str | None:
    if not component or not isinstance(component, str):
        return None
    return component.rsplit(":", 1)[-1]


def _drift_names(items: Any) -> list[str]:
    """``Backend/customer-1-db`` per drifted resource (component/name)."""
    names: list[str] = []
    for item in items or []:
        if isinstance(item, Mapping):
            name = item.get("name") or (str(item.get("urn", "")).rsplit("::", 1)[-1]) or "?"
            component = _short_component(item.get("component"))
            names.append(f"{component}/{name}" if component and component != name else str(name))
        else:
            names.append(str(item))
    return names


def _pending_ops(items: Any) -> list[str]:
    """``update customer-1-site`` per pending operation (op name)."""
    ops: list[str] = []
    for item in items or []:
        if isinstance(item, Mapping):
            name = item.get("name") or (str(item.get("urn", "")).rsplit("::", 1)[-1]) or "?"
            op = item.get("op")
            ops.append(f"{op} {name}" if op else str(name))
        else:
            ops.append(str(item))
    return ops


def _summarise(values: list[str], limit: int = SUMMARY_NAMES) -> str:
    if len(values) <= limit:
        return ", ".join(values)
    return ", ".join(values[:limit]) + f" and {len(values) - limit} more"


# --------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class DriftSummary:
    """The last drift check of one stack."""

    status: str
    when: datetime | None
    drifted: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    error: str | None = None

    @property
    def summary(self) -> str:
        """``drifted: Backend/db, Frontend/site; pending: update api``."""
        parts = []
        if self.drifted:
            parts.append("drifted: " + _summarise(list(self.drifted)))
        if self.pending:
            parts.append("pending: " + _summarise(list(self.pending)))
        return "; ".join(parts)

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "status": self.status,
            "when": _iso(self.when),
            "age_s": _age(now, self.when),
            "drifted": list(self.drifted),
            "pending": list(self.pending),
            "error": self.error,
        }


def _age(now: datetime, when: datetime | None) -> int | None:
    if when is None:
        return None
    return max(0, int((now - when).total_seconds()))


@dataclass(frozen=True)
class Cell:
    """One target (tenant x environment) of the grid, or a stack outside it."""

    tenant: str | None
    environment: str | None
    stack: str
    #: ``n/a``, ``never``, ``destroyed`` or the latest deployment's ledger status.
    status: str
    operation: str | None = None
    release: str | None = None
    when: datetime | None = None
    error: str | None = None
    drift: DriftSummary | None = None
    run_id: str | None = None

    @property
    def connected(self) -> bool:
        return self.status != NOT_CONNECTED

    @property
    def statuses(self) -> tuple[str, ...]:
        """The deployment status and, when checked, the drift status."""
        if self.drift is None:
            return (self.status,)
        return (self.status, self.drift.status)

    @property
    def drift_shown(self) -> str | None:
        """The drift status the cell's colour shows: ``drifted``, ``pending``
        or ``drifted+pending`` from a check made after the latest deployment
        (an older check says little about what is deployed now); else None."""
        drift = self.drift
        if drift is None or drift.status not in ("drifted", "pending", "drifted+pending"):
            return None
        if self.when is not None and drift.when is not None and utc(drift.when) < utc(self.when):
            return None
        return drift.status

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "environment": self.environment,
            "stack": self.stack,
            "status": self.status,
            "operation": self.operation,
            "release": self.release,
            "when": _iso(self.when),
            "age_s": _age(now, self.when),
            "error": self.error,
            "drift": self.drift.to_dict(now) if self.drift else None,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class TenantRow:
    id: str
    name: str
    enabled: bool
    tags: dict[str, str]
    cells: tuple[Cell, ...]  # one per FleetStatus.environments, same order

    def cell(self, environment: str) -> Cell:
        for cell in self.cells:
            if cell.environment == environment:
                return cell
        raise KeyError(environment)

    @property
    def tag_pairs(self) -> list[str]:
        return [f"{k}={v}" for k, v in sorted(self.tags.items())]

    @property
    def statuses(self) -> list[str]:
        """Every deployment and drift status among the connected cells."""
        seen: list[str] = []
        for cell in self.cells:
            if cell.connected:
                seen.extend(s for s in cell.statuses if s not in seen)
        return seen

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "enabled": self.enabled,
            "tags": dict(self.tags),
            "cells": {c.environment: c.to_dict(now) for c in self.cells},
        }


@dataclass
class FleetStatus:
    generated: datetime
    environments: tuple[str, ...]
    tenants: list[TenantRow] = field(default_factory=list)
    #: Tenant stacks in the ledger that the registry does not list (any more).
    orphans: list[Cell] = field(default_factory=list)
    #: Stacks without a tenant (the shared stack, untenanted deployments).
    untenanted: list[Cell] = field(default_factory=list)

    def row(self, tenant_id: str) -> TenantRow:
        for row in self.tenants:
            if row.id == tenant_id:
                return row
        raise KeyError(tenant_id)

    def cell(self, tenant_id: str, environment: str) -> Cell:
        return self.row(tenant_id).cell(environment)

    @property
    def counts(self) -> dict[str, int]:
        """Connected cells per deployment status, then per drift status."""
        deploy: Counter[str] = Counter()
        drift: Counter[str] = Counter()
        for row in self.tenants:
            for cell in row.cells:
                if cell.connected:
                    deploy[cell.status] += 1
                    if cell.drift:
                        drift[cell.drift.status] += 1
        total = sum(deploy.values())
        return {
            "targets": total,
            **dict(sorted(deploy.items())),
            **{f"drift:{k}": v for k, v in sorted(drift.items())},
            "orphans": len(self.orphans),
        }

    @property
    def tag_pairs(self) -> list[str]:
        return sorted({pair for row in self.tenants for pair in row.tag_pairs})

    @property
    def all_statuses(self) -> list[str]:
        """Every status shown in the grid (deployment and drift), stable order."""
        order = list(STATUS_STYLES)
        seen = {s for row in self.tenants for c in row.cells if c.connected for s in c.statuses}
        return [s for s in order if s in seen] + sorted(seen - set(order))

    def to_dict(self) -> dict[str, Any]:
        now = self.generated
        return {
            "generated": _iso(now),
            "environments": list(self.environments),
            "counts": self.counts,
            "tenants": [row.to_dict(now) for row in self.tenants],
            "orphans": [c.to_dict(now) for c in self.orphans],
            "untenanted": [c.to_dict(now) for c in self.untenanted],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **({"indent": 2} | kwargs))


# --------------------------------------------------------------------------
# building it


def _drift_of(row: Any) -> DriftSummary:
    details = row.details or {}
    return DriftSummary(
        status=row.status,
        when=utc(row.ended or row.started),
        drifted=tuple(_drift_names(details.get("drift"))),
        pending=tuple(_pending_ops(details.get("pending"))),
        error=_error_line(row),
    )


def _cell(tenant: str | None, environment: str | None, stack: str, deploy: Any | None, drift: Any | None) -> Cell:
    drift_summary = _drift_of(drift) if drift is not None else None
    if deploy is None:
        return Cell(
            tenant, environment, stack, NEVER, drift=drift_summary, error=drift_summary.error if drift_summary else None
        )
    status = deploy.status
    if deploy.operation == "destroy" and status == "succeeded":
        status = DESTROYED
    error = _error_line(deploy)
    if error is None and drift_summary is not None and drift_summary.error:
        # A drift check that failed after the deployment: its error is the last.
        if drift.id > deploy.id:
            error = drift_summary.error
    return Cell(
        tenant=tenant,
        environment=environment,
        stack=stack,
        status=status,
        operation=deploy.operation,
        release=deploy.release,
        when=utc(deploy.ended or deploy.started),
        error=error,
        drift=drift_summary,
        run_id=deploy.run_id,
    )


def _stack_name(tenant: str, environment: str) -> str:
    return f"{tenant}.{environment}"


def fleet_status(ledger: Any, registry: Any, *, now: datetime | None = None) -> FleetStatus:
    """The fleet grid from the ledger (two queries) and the registry.

    ``ledger`` needs ``latest_by_stack(operations)``; ``registry`` needs
    ``environment_names`` and ``tenants`` (``id``, ``name``, ``environments``,
    ``tags``, ``enabled``).
    """
    now = utc(now) or names.now()
    deploys = ledger.latest_by_stack(DEPLOYMENT_OPERATIONS)
    drifts = ledger.latest_by_stack((DRIFT_OPERATION,))

    environments = list(getattr(registry, "environment_names", ()) or ())
    tenants = list(getattr(registry, "tenants", ()) or ())
    for tenant in tenants:  # environments a (fake) registry forgot to list
        for env in tenant.environments:
            if env not in environments:
                environments.append(env)

    rows: list[TenantRow] = []
    known: set[str] = set()
    for tenant in tenants:
        connected = set(tenant.environments)
        cells = []
        for env in environments:
            stack = _stack_name(tenant.id, env)
            if env in connected:
                known.add(stack)
                cells.append(_cell(tenant.id, env, stack, deploys.get(stack), drifts.get(stack)))
            else:
                cells.append(Cell(tenant.id, env, stack, NOT_CONNECTED))
        rows.append(
            TenantRow(
                id=tenant.id,
                name=getattr(tenant, "name", None) or tenant.id,
                enabled=bool(getattr(tenant, "enabled", True)),
                tags={str(k): str(v) for k, v in dict(getattr(tenant, "tags", None) or {}).items()},
                cells=tuple(cells),
            )
        )

    orphans: list[Cell] = []
    untenanted: list[Cell] = []
    for stack in sorted(set(deploys) | set(drifts)):
        if stack in known:
            continue
        deploy, drift = deploys.get(stack), drifts.get(stack)
        sample = deploy or drift
        cell = _cell(sample.tenant, sample.environment, stack, deploy, drift)
        (untenanted if sample.tenant is None else orphans).append(cell)
    return FleetStatus(
        generated=now,
        environments=tuple(environments),
        tenants=rows,
        orphans=orphans,
        untenanted=untenanted,
    )


# --------------------------------------------------------------------------
# terminal


def _styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _cell_text(cell: Cell, now: datetime, *, error_width: int = 60) -> Text:
    """Plain Text objects only: tenant data never goes through rich markup."""
    if not cell.connected:
        return Text(NOT_CONNECTED, style="dim")
    text = _styled(cell.status)
    if cell.operation and cell.operation != "up":
        text.append(f" ({cell.operation})", style="dim")
    if cell.release:
        text.append(f" {cell.release}")
    if cell.when:
        text.append(f" {format_age(_age(now, cell.when))}", style="dim")
    if cell.drift:
        text.append("\n")
        text.append_text(_styled(cell.drift.status))
        if cell.drift.when:
            text.append(f" {format_age(_age(now, cell.drift.when))}", style="dim")
        if cell.drift.summary:
            text.append("\n" + _truncate(cell.drift.summary, error_width), style="yellow")
    if cell.error:
        text.append("\n" + _truncate(cell.error, error_width), style="red")
    return text


def _truncate(value: str, width: int) -> str:
    value = " ".join(value.split())
    return value if len(value) <= width else value[: width - 1] + "…"


def render_table(status: FleetStatus, *, error_width: int = 60) -> Table:
    """The grid for the terminal: tenants as rows, environments as columns."""
    counts = ", ".join(f"{v} {k}" for k, v in status.counts.items() if k not in ("targets", "orphans"))
    table = Table(
        title=f"Fleet status ({len(status.tenants)} tenants, {status.counts['targets']} targets)",
        caption=counts or None,
        show_lines=True,
    )
    table.add_column("tenant", no_wrap=True)
    for env in status.environments:
        table.add_column(env)
    for row in status.tenants:
        label = Text(row.id, style="bold" if row.enabled else "dim")
        if row.name and row.name != row.id:
            label.append(f"\n{row.name}", style="dim")
        if not row.enabled:
            label.append("\ndisabled", style="dim italic")
        table.add_row(
            label,
            *(_cell_text(c, status.generated, error_width=error_width) for c in row.cells),
            style=None if row.enabled else "dim",
        )
    return table


def render_orphans_table(status: FleetStatus, *, error_width: int = 60) -> Table | None:
    """Stacks outside the registry (orphaned/offboarded) and untenanted ones; None when none."""
    cells = [("orphan", c) for c in status.orphans] + [
        (SHARED_STACK if c.stack == SHARED_STACK else "untenanted", c) for c in status.untenanted
    ]
    if not cells:
        return None
    table = Table(title="Stacks not in the registry's grid")
    for name in ("stack", "kind", "latest"):
        table.add_column(name)
    for kind, cell in cells:
        table.add_row(Text(cell.stack), Text(kind), _cell_text(cell, status.generated, error_width=error_width))
    return table


# --------------------------------------------------------------------------
# HTML


def _jinja_env():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,  # tenant names, tags and error strings are untrusted
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = lambda when, now: format_age(_age(now, when))
    env.filters["iso"] = _iso
    env.filters["ts"] = lambda when: utc(when).strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""
    env.filters["tojson_attr"] = lambda value: json.dumps(value, sort_keys=True)
    env.filters["slug"] = lambda value: re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-")
    return env


def render_html(status: FleetStatus, *, run_id: str | None = None) -> str:
    """The dashboard as one self-contained HTML document (inline CSS and JS)."""
    template = _jinja_env().get_template("status.html.j2")
    return template.render(
        status=status,
        now=status.generated,
        run_id=run_id,
        counts=status.counts,
        statuses=status.all_statuses,
        tag_pairs=status.tag_pairs,
        NOT_CONNECTED=NOT_CONNECTED,
    )


def write_html(status: FleetStatus, path: str | os.PathLike[str], *, run_id: str | None = None) -> Path:
    """Write the dashboard to ``path`` atomically; return the path."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(render_html(status, run_id=run_id), encoding="utf-8")
    os.replace(tmp, path)
    return path
