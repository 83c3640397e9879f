"""The runner's commands as plain functions: arguments in, result objects out.

The CLI (runner.cli) parses options and calls one function here; other Python
programs can call them the same way. Problems found before anything ran raise
:class:`UsageProblem` (exit code 2): nothing was deployed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runner import registry as reg
from runner import report as rpt
from runner.fleet import Fleet, FleetError, FleetOptions, Job, new_run_id

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_REGISTRY = PROJECT_DIR / "stacks" / "tenants.yaml"


class UsageProblem(Exception):
    """Bad input: a usage error, an invalid registry or selection (exit 2)."""


class CommandProblem(Exception):
    """A single-target command that ran and failed (exit 1)."""


@dataclass(frozen=True)
class Selectors:
    tenants: tuple[str, ...] = ()
    all_tenants: bool = False
    envs: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    untenanted: bool = False
    shard: str | None = None


@dataclass(frozen=True)
class Context:
    """Where things are: the project, registry, state backend and ledger."""

    project_dir: Path = PROJECT_DIR
    registry: str | None = None
    backend: str | None = None
    ledger: str | None = None
    state_dir: Path | None = None

    @property
    def registry_source(self) -> str:
        return self.registry or os.environ.get("RUNNER_REGISTRY") or str(DEFAULT_REGISTRY)

    @property
    def runner_dir(self) -> Path:
        """Work areas, logs, generated stack config, default state and ledger
        (RUNNER_STATE_DIR; default .runner in the project)."""
        configured = self.state_dir or os.environ.get("RUNNER_STATE_DIR")
        return Path(configured or self.project_dir / ".runner").resolve()

    @property
    def ledger_url(self) -> str:
        return self.ledger or os.environ.get("RUNNER_LEDGER") or f"sqlite:///{self.runner_dir / 'ledger.db'}"

    @property
    def backend_url(self) -> str | None:
        return self.backend or os.environ.get("RUNNER_BACKEND")


def load(ctx: Context) -> reg.Registry:
    try:
        return reg.load_registry(ctx.registry_source)
    except reg.RegistryError as exc:
        raise UsageProblem(str(exc)) from None


def select(registry: reg.Registry, sel: Selectors) -> reg.Selection:
    from runner import shard as sh

    try:
        selection = reg.select_targets(
            registry, tenants=sel.tenants, all_tenants=sel.all_tenants, envs=sel.envs, tags=sel.tags,
            exclude=sel.exclude, untenanted=sel.untenanted,
        )
    except reg.SelectionError as exc:
        raise UsageProblem(str(exc)) from None
    shard = None
    try:
        shard = sh.parse_shard(sel.shard) if sel.shard else sh.shard_from_env(os.environ)
    except ValueError as exc:
        raise UsageProblem(f"--shard: {exc}") from None
    if shard:
        index, count = shard
        selection = replace(
            selection,
            targets=sh.select_shard(selection.targets, index, count),
            skipped=[(t, why) for t, why in selection.skipped if sh.shard_of(t.stack, count) == index],
        )
    return selection


def program_commit(project_dir: Path) -> str | None:
    """The project's git commit, with `-dirty` when the work tree has changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=project_dir,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project_dir,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def config_fingerprint(config: dict[str, Any], secret_values: dict[str, str], key: str) -> str:
    """A fingerprint of a target's config; secret values enter only through an HMAC."""
    secrets = {k: hmac.new(key.encode(), v.encode(), hashlib.sha256).hexdigest() for k, v in secret_values.items()}
    blob = json.dumps({"config": config, "secrets": secrets}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def deployed_release(ledger, stack: str, fallback: str | None) -> str:
    """The release a target runs now: its newest successful up or rollback."""
    row = ledger.last_good_release(stack)
    return (row.release if row and row.release else None) or fallback or "unversioned"


def open_ledger(ctx: Context):
    from runner.ledger import Ledger

    ctx.runner_dir.mkdir(parents=True, exist_ok=True)
    return Ledger(ctx.ledger_url)


@dataclass(frozen=True)
class RunSettings:
    operation: str
    concurrency: int = os.cpu_count() or 2
    on_failure: str = "continue"
    max_failures: int | None = None
    lock_timeout: float = 120.0
    release: str | None = None
    run_id: str | None = None
    detailed_exitcode: bool = False
    remove_stacks: bool = False
    remediate: str | None = None  # drift: "up" enforces the code, "refresh" accepts reality
    argv: Sequence[str] = ()
    extra_config: dict[str, Any] = field(default_factory=dict)


def fleet_run(ctx: Context, sel: Selectors, settings: RunSettings, *, progress=None,
              make_progress=None) -> rpt.Report:
    """up / preview / refresh / destroy / drift over the selected targets."""
    registry = load(ctx)
    selection = select(registry, sel)
    run_id = settings.run_id or new_run_id()
    commit = program_commit(ctx.project_dir)
    # `up` deploys --release (default: the commit); the other operations compare
    # against what each target has deployed, unless --release names another one.
    release = settings.release or (commit or "unversioned" if settings.operation == "up" else None)
    options = FleetOptions(
        operation=settings.operation, concurrency=settings.concurrency, on_failure=settings.on_failure,
        max_failures=settings.max_failures, lock_timeout=settings.lock_timeout, release=release,
        run_id=run_id, remove_stacks=settings.remove_stacks, extra_config=settings.extra_config,
    )
    with open_ledger(ctx) as ledger:
        if progress is None and make_progress is not None:
            progress = make_progress(run_id, len(selection.targets))
        fleet = Fleet(ctx.project_dir, state_dir=ctx.runner_dir, backend=ctx.backend_url, ledger=ledger,
                      progress=progress)

        def resolve(target):
            return reg.resolve_secrets(target, registry.base_dir)

        try:
            jobs = fleet.jobs_for(selection.targets, settings.operation, options, resolve)
        except FleetError as exc:
            raise UsageProblem(str(exc)) from None
        if release is None and settings.operation in ("preview", "drift", "refresh"):
            jobs = [replace(j, config={**j.config, "release": deployed_release(ledger, j.stack, commit)}) for j in jobs]
        jobs = [replace(j, details={
            "program_commit": commit,
            "config_fingerprint": config_fingerprint(dict(j.config), dict(j.secret_values), fleet.master),
            "remove_stack": settings.remove_stacks,
        }) for j in jobs]
        ledger.start_run(run_id, settings.operation, argv=list(settings.argv), release=options.release,
                         shard=sel.shard, options={"concurrency": settings.concurrency})
        report = rpt.Report(run_id=run_id, command=settings.operation, release=options.release,
                            detailed_exitcode=settings.detailed_exitcode)
        for target, reason in selection.skipped:
            result = report.add(rpt.TargetResult(target.tenant, target.environment, target.stack,
                                                 settings.operation, rpt.SKIPPED, error=reason,
                                                 details={"reason": reason}))
            ledger.record(run_id, tenant=result.tenant, environment=result.environment, stack=result.stack,
                          operation=result.operation, status=result.status, release=options.release,
                          error=reason, details=result.details)
        shared = None
        if settings.operation == "up" and jobs:
            shared = fleet.shared_job(registry.defaults, options)
        fleet.run(jobs, options, report=report, shared=shared)
        if settings.operation == "drift" and settings.remediate:
            remediate(fleet, jobs, report, settings.remediate, options)
        ledger.finish_run(run_id, "interrupted" if report.interrupted else "finished", report.counts)
    return report


def remediate(fleet: Fleet, jobs: list[Job], report: rpt.Report, how: str, options: FleetOptions) -> None:
    """Fix what the drift check found, then check again: the report shows the
    drift before, the remediation, and the drift after, for each fixed target."""
    wanted = {rpt.DRIFTED, rpt.DRIFTED_PENDING} | ({rpt.PENDING} if how == "up" else set())
    before = {t.stack: t for t in report.targets if t.operation == "drift" and t.status in wanted}
    todo = [j for j in jobs if j.stack in before]
    if not todo:
        return
    log_dir = fleet.state_dir / "logs" / report.run_id
    fix = replace(options, operation=how)
    fleet.run_batch([replace(j, operation=how, details={**j.details, "refresh": True}) for j in todo],
                    fix, report, log_dir)
    fixed = {t.stack for t in report.targets if t.operation == how and t.status == rpt.SUCCEEDED}
    for stack in fixed:
        before[stack].details["superseded"] = True
    fleet.run_batch([replace(j, details={**j.details, "after": how}) for j in todo if j.stack in fixed],
                    options, report, log_dir)


def outputs(ctx: Context, tenant: str, env: str) -> dict[str, Any]:
    registry = load(ctx)
    selection = select(registry, Selectors(tenants=(tenant,), envs=(env,)))
    if not selection.targets:
        raise UsageProblem(f"tenant {tenant!r} is not connected to environment {env!r} (or is disabled)")
    target = selection.targets[0]
    fleet = Fleet(ctx.project_dir, state_dir=ctx.runner_dir, backend=ctx.backend_url)
    job = Job(target.tenant, target.environment, target.stack, "outputs", {}, {})
    result = fleet.run_job(job, new_run_id(), ctx.runner_dir / "logs" / "outputs")
    if result.status != rpt.SUCCEEDED:
        raise CommandProblem(f"{target.stack}: {result.error_line}")
    return result.outputs


def host_id() -> str:
    return socket.gethostname()
