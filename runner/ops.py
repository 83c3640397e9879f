"""The runner's commands as plain functions: arguments in, result objects out.

The CLI (runner.cli) parses options and calls one function here; other Python
programs can call them the same way. Problems found before anything ran raise
:class:`UsageProblem` (exit code 2): nothing was deployed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runner import registry as reg
from runner import report as rpt
from runner.fleet import (  # noqa: F401
    DEFAULT_MAX_DESTROY,
    Fleet,
    FleetError,
    Job,
    Progress,
    RunSettings,  # RunSettings, DEFAULT_MAX_DESTROY: ops' API too
    build_jobs,
    new_run_id,
)
from runner.names import PROJECT_DIR, SHARED_STACK
from runner.plan import RunPlan
from runner.run import Run

DEFAULT_REGISTRY = PROJECT_DIR / "stacks" / "tenants.yaml"


from runner.problems import UsageProblem  # noqa: E402  (defined low, so runner.engine can raise it too)


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
    default_all_tenants: bool = False  # no tenant selector means the whole fleet (recover)


@dataclass(frozen=True)
class Context:
    """Where things are: the project, registry, state backend and ledger."""

    # RUNNER_PROJECT_DIR: run another checkout of the project (its Pulumi.yaml,
    # stacks/, components/ and git history) with this installation of the runner.
    project_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("RUNNER_PROJECT_DIR") or PROJECT_DIR).resolve()
    )
    registry: str | None = None
    backend: str | None = None
    ledger: str | None = None
    state_dir: Path | None = None

    @property
    def registry_source(self) -> str:
        return self.registry or os.environ.get("RUNNER_REGISTRY") or str(self.project_dir / "stacks" / "tenants.yaml")

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


def operation_is_fleet_wide_by_default(operation: str) -> bool:
    """`recover` only removes locks whose holder is provably dead and clears
    interrupted updates' pending operations: without a selector it covers
    the whole fleet."""
    return operation == "recover"


def select(registry: reg.Registry, sel: Selectors) -> reg.Selection:
    from runner import shard as sh

    try:
        selection = reg.select_targets(
            registry,
            tenants=sel.tenants,
            all_tenants=sel.all_tenants,
            envs=sel.envs,
            tags=sel.tags,
            exclude=sel.exclude,
            untenanted=sel.untenanted,
            default_all_tenants=sel.default_all_tenants,
        )
    except reg.SelectionError as exc:
        raise UsageProblem(str(exc)) from None
    shard = shard_in_effect(sel.shard)
    if shard:
        index, count = shard
        selection = replace(
            selection,
            targets=sh.select_shard(selection.targets, index, count),
            skipped=[(t, why) for t, why in selection.skipped if sh.shard_of(t.stack, count) == index],
        )
    return selection


def shard_in_effect(option: str | None) -> tuple[int, int] | None:
    """The shard a command runs: --shard I/N, else JOB_COMPLETION_INDEX/COUNT, else None."""
    from runner import shard as sh

    try:
        return sh.parse_shard(option) if option else sh.shard_from_env(os.environ)
    except ValueError as exc:
        raise UsageProblem(f"--shard: {exc}") from None


def refuse_shard(what: str, option: str | None) -> None:
    """Destructive commands decide what to remove from the whole registry, never a shard (#15.1)."""
    shard = shard_in_effect(option)
    if shard and shard[1] > 1:  # 0/1 is the whole registry
        source = "--shard" if option else "JOB_COMPLETION_INDEX/JOB_COMPLETION_COUNT"
        raise UsageProblem(
            f"{what} refuses to run in shard {shard[0]}/{shard[1]} (from {source}): what it destroys is decided "
            f"from the whole registry, never a shard; run it once, unsharded (nothing was changed)"
        )


def guard_destroy(
    stacks: Sequence[str],
    what: str,
    settings: RunSettings,
    *,
    announce: Callable[[str], None] | None = None,
    confirm: Callable[[list[str]], bool] | None = None,
) -> None:
    """The blast-radius limits of every destructive command, before anything runs:
    list the stacks (``announce``), refuse more than ``settings.max_destroy``,
    then go on only with ``settings.yes`` or a ``confirm`` that says yes
    (the CLI asks on a terminal; None: not interactive). UsageProblem otherwise."""
    stacks = list(stacks)
    if not stacks:
        return
    if announce is not None:
        announce(f"{what}: {len(stacks)} stack(s) to destroy:\n" + "\n".join(f"  - {s}" for s in stacks))
    if len(stacks) > settings.max_destroy:
        raise UsageProblem(
            f"{what} would destroy {len(stacks)} stack(s), above --max-destroy {settings.max_destroy}: "
            f"nothing was destroyed (pass --max-destroy {len(stacks)} to allow it)"
        )
    if settings.yes:
        return
    if confirm is None:
        raise UsageProblem(f"{what}: confirm with --yes when not on a terminal (nothing was destroyed)")
    if not confirm(stacks):
        raise UsageProblem(f"{what} not confirmed: nothing was destroyed")


def offboard_candidates(registry: reg.Registry, existing) -> tuple[list[str], list[str]]:
    """Split the backend's stacks that the whole registry (never a shard) does not
    want: (orphans ``<valid tenant id>.<registry environment>`` that --prune may
    offboard, unmanaged stacks that are never pruned). `shared` and untenanted
    environment stacks are neither."""
    try:
        wanted = {t.stack for t in reg.select_targets(registry, all_tenants=True).targets}
    except reg.SelectionError as exc:
        raise UsageProblem(str(exc)) from None
    envs = set(registry.environment_names)
    orphans, unmanaged = [], []
    for stack in sorted(set(existing) - wanted - envs - {SHARED_STACK}):
        tenant_id, dot, env = stack.partition(".")
        (orphans if dot and reg.is_valid_id(tenant_id) and env in envs else unmanaged).append(stack)
    return orphans, unmanaged


# The program: what a release deploys. The registry (stacks/tenants.yaml) is config, not program.
PROGRAM_PATHS = (
    "Pulumi.yaml",
    "stacks",
    "components",
    ":(exclude)stacks/tenants.yaml",
    ":(exclude,glob)**/__pycache__/**",
)


def program_commit(project_dir: Path, *, full: bool = False) -> str | None:
    """The program's commit (12 digits, all with `full`): the newest commit that changed the program's files
    (Pulumi.yaml, stacks/ without the registry, components/), with `-dirty` when
    those files differ from it. Registry edits and commits that touch only other
    files (README, tests, the runner) leave it unchanged: they are no new release."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=project_dir, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("log", "-1", "--format=%H", "HEAD", "--", *PROGRAM_PATHS) or git("rev-parse", "HEAD")
        commit = commit if full else git("rev-parse", "--short=12", commit)
        dirty = git("status", "--porcelain", "--untracked-files=all", "--", *PROGRAM_PATHS)
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def program_fingerprint(project_dir: Path) -> str:
    """A hash of the program's sources: Pulumi.yaml, stacks/ (without the registry) and components/."""
    digest = hashlib.sha256()
    files = [project_dir / "Pulumi.yaml"]
    for folder in ("stacks", "components"):
        files += sorted(
            p
            for p in (project_dir / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.name != "tenants.yaml"
        )
    for path in files:
        digest.update(str(path.relative_to(project_dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def config_fingerprint(config: dict[str, Any], secret_values: dict[str, str], key: str, program: str = "") -> str:
    """A fingerprint of what a target deploys: program sources, config (with the
    release) and secrets, which enter only through an HMAC."""
    secrets = {k: hmac.new(key.encode(), v.encode(), hashlib.sha256).hexdigest() for k, v in secret_values.items()}
    blob = json.dumps({"program": program, "config": config, "secrets": secrets}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _what_changed(last, job: Job) -> str:
    """What differs between the last good deploy and `job`, as far as the ledger can tell."""
    before, now = dict(last.config_snapshot or {}), dict(job.config)
    if before.get("release") != now.get("release"):
        return f"release {before.get('release')} -> {now.get('release')}"
    keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if keys:
        return f"config changed ({', '.join(keys)})"
    return "program or secrets changed"


def skip_decision(ledger, job: Job, max_age: float) -> tuple[bool, str]:
    """Whether `up --skip-unchanged` skips `job`, and why (or why not), in words.

    The rule: skip when the program, config, secrets and release equal the last
    good deploy (fingerprint) and the newest evidence that reality matches the
    state is younger than `max_age` seconds. That evidence is the last good
    deploy itself (the engine just wrote those resources) or a newer in-sync
    drift check; a newer drift check that found anything else means no skip.
    `max_age` inf (sync): the fingerprint alone decides."""
    last = ledger.last_good_release(job.stack)
    if last is None:
        return False, "not skipped: never deployed successfully"
    if last.config_fingerprint != job.config_fingerprint:
        return False, f"not skipped: {_what_changed(last, job)} since run {last.run_id}"
    if max_age == math.inf:
        return True, f"unchanged since run {last.run_id}"
    drift = ledger.latest_drift(job.stack)
    if drift is not None and drift.id > last.id:
        if drift.status != rpt.IN_SYNC:
            return False, f"not skipped: the last drift check (run {drift.run_id}) found it {drift.status}"
        seen, how = drift.ended or drift.started, "in sync"
    else:
        seen, how = last.ended or last.started, "deployed"
    age = (rpt.now() - seen).total_seconds()
    if age > max_age:
        return False, (
            f"not skipped: {how} {_ago(age)} ago, older than --max-age {_ago(max_age)} "
            f"(no drift check since; `runner drift` refreshes it)"
        )
    return True, f"unchanged since run {last.run_id}; {how} {_ago(age)} ago"


def unchanged_reason(ledger, job: Job, max_age: float) -> str | None:
    """Why `job` needs no up (see :func:`skip_decision`), or None when it needs one."""
    skip, why = skip_decision(ledger, job, max_age)
    return why if skip else None


def deployed_release(ledger, stack: str, fallback: str | None) -> str:
    """The release a target runs now: its newest successful up or rollback."""
    row = ledger.last_good_release(stack)
    return (row.release if row and row.release else None) or fallback or "unversioned"


def open_ledger(ctx: Context):
    from runner.ledger import Ledger

    ctx.runner_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # holds state and keys (#15.6)
    return Ledger(ctx.ledger_url)


def fleet_run(
    ctx: Context,
    sel: Selectors,
    settings: RunSettings,
    *,
    make_progress: Callable[[str, int], Progress] | None = None,
    announce: Callable[[str], None] | None = None,
    confirm: Callable[[list[str]], bool] | None = None,
) -> rpt.Report:
    """up / preview / refresh / destroy / drift / rollback over the selected targets.

    Reads top to bottom: the registry and the selection, the release, the
    jobs (every secret resolved before the engine is touched), the plan
    (order, gates, waves, failure policy), then the run: each step of the
    plan executed by the fleet, recorded by the run. ``make_progress(run_id,
    total)`` gives the progress display, a context manager entered for the run.
    destroy: listed, limited and confirmed first (guard_destroy; announce/confirm)."""
    registry = load(ctx)
    selection = select(registry, fleet_selectors(sel, settings))
    version = ProgramVersion.of(ctx.project_dir)
    settings, manifest = run_settings(ctx, settings, version)
    with open_ledger(ctx) as ledger:
        run = Run(ledger, settings, release=settings.release)
        run.mark_interrupted()
        targets, skipped = chosen_targets(ledger, selection, settings)
        if settings.operation == "destroy":
            guard_destroy([t.stack for t in targets], "destroy", settings, announce=announce, confirm=confirm)
        try:  # every secret resolved before the engine is touched: a missing one is exit 2
            jobs = build_jobs(
                targets, settings.operation, settings, lambda t: reg.resolve_secrets(t, registry.base_dir)
            )
        except FleetError as exc:
            raise UsageProblem(str(exc)) from None
        with (make_progress or (lambda run_id, total: Progress()))(run.run_id, len(targets)) as progress:
            fleet = Fleet(ctx.project_dir, state_dir=ctx.runner_dir, backend=ctx.backend_url, progress=progress)
            jobs = [stamped(fleet, ledger, j, version, settings) for j in jobs]
            jobs, skipped, refused = prepared_jobs(ctx, fleet, run, jobs, skipped, version, manifest)
            if settings.plan_only:  # sync --dry-run: say what would run, run and record nothing
                return dry_run_report(run, jobs, skipped)
            plan = run_plan(registry, selection, jobs, settings, fleet, run, version)  # a bad --wave: exit 2 here
            run.begin(shard=sel.shard)
            for target, reason in skipped:
                run.record(skipped_result(target, reason, settings))
            for job, reason in refused:  # up --plans: a target whose preview failed has nothing to apply
                run.record(
                    rpt.TargetResult(job.tenant, job.environment, job.stack, job.operation, rpt.FAILED, error=reason)
                )
            with fleet.interruptible(run.report):
                run.execute(plan, fleet)
            after_run(ctx, fleet, run, jobs, version)
        return run.finish()


def fleet_selectors(sel: Selectors, settings: RunSettings) -> Selectors:
    """What the operation selects when no tenant is named; destroy never runs in a shard."""
    if settings.rerun_failed and not (sel.tenants or sel.all_tenants or sel.untenanted):
        sel = replace(sel, all_tenants=True)
    if operation_is_fleet_wide_by_default(settings.operation) or settings.plans:
        sel = replace(sel, default_all_tenants=True)  # up --plans: the manifest says which targets
    if settings.operation == "destroy":
        refuse_shard("destroy", sel.shard)
    return sel


@dataclass(frozen=True)
class ProgramVersion:
    """The program the project holds now: its commit (full, and 12 digits) and fingerprint."""

    full_commit: str | None
    commit: str | None
    fingerprint: str

    @classmethod
    def of(cls, project_dir: Path) -> ProgramVersion:
        full = program_commit(project_dir, full=True)  # what a rollback verifies and checks out
        short = full and full[:12] + ("-dirty" if full.endswith("-dirty") else "")
        return cls(full, short, program_fingerprint(project_dir))


def run_settings(ctx: Context, settings: RunSettings, version: ProgramVersion) -> tuple[RunSettings, dict | None]:
    """The settings as the run uses them: its run id and release decided, labels checked;
    `up --plans`: the reviewed manifest checked and its stacks the only ones."""
    run_id = settings.run_id or new_run_id()
    # both become directory names (logs/<run id>, releases/...): labels only (#15.3, #15.11)
    for what, value in (("--run-id", run_id), ("--release", settings.release)):
        if value is not None and (problem := reg.label_problem(value, what.removeprefix("--").replace("-", " "))):
            raise UsageProblem(f"{what}: {problem}")
    operation = settings.operation
    # `up` deploys --release (default: the commit); the other operations compare
    # against what each target has deployed, unless --release names another one.
    release = settings.release or (version.commit or "unversioned" if operation == "up" else None)
    manifest = None
    if settings.save_plans and operation == "preview":  # the plans hold what `up` will deploy
        release = release or version.commit or "unversioned"
    elif settings.plans and operation == "up":  # exactly what was reviewed, or nothing (exit 2)
        from runner import review

        manifest = review.load_manifest(settings.plans)
        review.check_manifest(
            settings.plans, manifest, program_commit=version.full_commit, registry_source=ctx.registry_source
        )
        release = settings.release or manifest.get("release") or release
        reviewed = review.reviewed_stacks(manifest)
        settings = replace(
            settings, only_stacks=reviewed if settings.only_stacks is None else reviewed & settings.only_stacks
        )
    return replace(settings, run_id=run_id, release=release), manifest


def chosen_targets(ledger, selection: reg.Selection, settings: RunSettings) -> tuple[list, list]:
    """The targets to run and the (target, reason) pairs skipped: --rerun-failed, --plans narrow them."""
    targets, skipped = selection.targets, list(selection.skipped)
    if settings.rerun_failed:
        targets = rerun_targets(ledger, targets, settings.rerun_failed)
    if settings.only_stacks is not None:
        targets = [t for t in targets if t.stack in settings.only_stacks]
        skipped = [(t, why) for t, why in skipped if t.stack in settings.only_stacks]
    return targets, skipped


def stamped(fleet: Fleet, ledger, job: Job, version: ProgramVersion, settings: RunSettings) -> Job:
    """A job with what the ledger records of it: the program and the config's fingerprint. Without
    --release, preview/drift/refresh compare against the release each target has deployed."""
    if settings.release is None and job.operation in ("preview", "drift", "refresh"):
        job = replace(job, config={**job.config, "release": deployed_release(ledger, job.stack, version.commit)})
    return replace(
        job,
        program_commit=version.full_commit,
        program_fingerprint=version.fingerprint,
        config_fingerprint=config_fingerprint(
            dict(job.config), dict(job.secret_values), fleet.master, version.fingerprint
        ),
    )


def prepared_jobs(
    ctx: Context, fleet: Fleet, run: Run, jobs: list[Job], skipped: list, version: ProgramVersion, manifest: dict | None
) -> tuple[list[Job], list, list]:
    """The jobs as this operation runs them: plans saved or applied (#20), drift against the deployed
    program, rollbacks planned, unchanged targets skipped. Returns them, the skipped targets and
    the (job, reason) of `up --plans` targets with no reviewed plan to apply."""
    from runner import releases, review

    settings, ledger, operation = run.settings, run.ledger, run.settings.operation
    refused = []
    if settings.save_plans and operation == "preview":
        jobs = review.preview_jobs(jobs, settings.save_plans)
    elif manifest is not None:
        jobs, refused = review.apply_jobs(jobs, settings.plans, manifest)
        run.report.notes.append(f"applying the plans reviewed in run {manifest.get('run_id')}: {len(jobs)} target(s)")
    if operation == "drift":  # each target against the code of its deployed release
        jobs = [releases.at_deployed_program(ledger, j, ctx.project_dir, ctx.runner_dir, version.commit) for j in jobs]
    if operation == "rollback":
        jobs, impossible = plan_rollbacks(fleet, ledger, jobs, settings.rollback_to, version.commit)
        skipped = skipped + impossible
    if operation == "up" and settings.skip_unchanged is not None:
        decisions = {j.stack: skip_decision(ledger, j, settings.skip_unchanged) for j in jobs}
        skipped = skipped + [(j, why) for j in jobs for skip, why in [decisions[j.stack]] if skip]
        jobs = [
            replace(j, details={**j.details, "skip_unchanged": decisions[j.stack][1]})
            for j in jobs
            if not decisions[j.stack][0]
        ]
        if settings.skip_unchanged != math.inf:
            for stack, (skip, why) in decisions.items():
                fleet.progress.note(f"{stack}: {'skipped: ' if skip else ''}{why}")
    return jobs, skipped, refused


def skipped_result(target, reason: str, settings: RunSettings) -> rpt.TargetResult:
    """A selected target that does not run: skipped; failed for a rollback with nothing to return to."""
    details = {"reason": reason}
    if settings.operation == "up" and settings.skip_unchanged is not None and reason.startswith("unchanged"):
        details["skip_unchanged"] = f"skipped: {reason}"
    return rpt.TargetResult(
        target.tenant,
        target.environment,
        target.stack,
        settings.operation,
        rpt.FAILED if settings.operation == "rollback" else rpt.SKIPPED,
        error=reason,
        details=details,
    )


def dry_run_report(run: Run, jobs: list[Job], skipped: list) -> rpt.Report:
    report = run.report
    for job in jobs:
        report.add(
            rpt.TargetResult(
                job.tenant, job.environment, job.stack, job.operation, rpt.SKIPPED, details={"plan": "deploy"}
            )
        )
    for target, reason in skipped:
        report.add(
            rpt.TargetResult(
                target.tenant, target.environment, target.stack, run.settings.operation, rpt.SKIPPED, error=reason
            )
        )
    report.ended = rpt.now()
    return report


def run_plan(
    registry: reg.Registry,
    selection: reg.Selection,
    jobs: list[Job],
    settings: RunSettings,
    fleet: Fleet,
    run: Run,
    version: ProgramVersion,
) -> RunPlan:
    """The order of work: `up` deploys the shared stack first, then environments in promotion order,
    each in the rollout's waves, behind the lifecycle gates; `preview` previews the shared stack first
    (before its first deploy, tenants read its outputs as unknown); the rest run in one step."""
    from runner import engine
    from runner import plan as plans

    operation, release, envs = settings.operation, settings.release, registry.environment_names
    shared = None
    if operation in ("up", "preview") and jobs:
        shared = Job(None, SHARED_STACK, SHARED_STACK, operation, dict(registry.defaults), {})
        if operation == "up" and release:
            shared = replace(shared, config={**shared.config, "release": release})
        if operation == "preview":  # its config as deployed, unless --release
            shared = replace(
                shared,
                config={
                    **shared.config,
                    "release": release or deployed_release(run.ledger, SHARED_STACK, version.commit),
                },
            )
            if SHARED_STACK not in engine.list_stacks(fleet.settings):
                jobs = [replace(j, config={**j.config, "shared_planned": True}) for j in jobs]
    if operation != "up":
        return plans.RunPlan(jobs, settings, shared=shared)
    connected = {t.id: t.environments for t in registry.tenants}

    def gate(job: Job) -> str | None:
        if settings.ignore_lifecycle:
            return None
        return run.read(
            f"checking the lifecycle gates of {job.stack}",
            plans.lifecycle_block,
            run.ledger,
            envs,
            connected,
            job,
            release,
            default="lifecycle gates not checked: the ledger could not be read",
        )

    return plans.RunPlan(
        jobs,
        settings,
        shared=shared,
        environments=envs,
        rollout=registry.rollout,
        tags={t.stack: dict(t.tags) for t in selection.targets},
        gate=gate,
        rollback=lambda job, failed: rollback_after_failure(fleet, run.ledger, job, failed, version.commit),
    )


def rollback_after_failure(fleet: Fleet, ledger, job: Job, failed: rpt.TargetResult, commit: str | None) -> Job | None:
    """--on-failure rollback: the job that returns a failed target to its last good release
    (None, with the reason in the failure's details, when there is none)."""
    from runner import releases

    try:
        row = releases.rollback_point(ledger, job.stack, current=job.config.get("release"))
        program = releases.program_at(
            fleet.project_dir, fleet.state_dir, row.program_commit, commit, row=row, fingerprint=job.program_fingerprint
        )
    except releases.RollbackImpossible as exc:
        failed.details["rollback"] = str(exc)
        return None
    return releases.rollback_job(job, row, program)


def after_run(ctx: Context, fleet: Fleet, run: Run, jobs: list[Job], version: ProgramVersion) -> None:
    """What follows the plan: the review files of `preview --save-plans`, drift's remediation and notes."""
    settings, report = run.settings, run.report
    if settings.save_plans and settings.operation == "preview" and not report.interrupted:
        from runner import review

        review.write_review(
            settings.save_plans,
            report,
            program_commit=version.full_commit,
            release=settings.release,
            registry_source=ctx.registry_source,
            fingerprints={j.stack: j.config_fingerprint for j in jobs},
        )
    if settings.operation == "drift" and settings.remediate:
        remediate(fleet, run, jobs, settings.remediate)
    if settings.operation == "drift" and (behind := [t.stack for t in report.targets if t.details.get("behind")]):
        report.notes.append(
            f"{len(behind)} target(s) behind (newer code or shared stack outputs they have "
            f"not received; not drift, see details.behind): {', '.join(behind)}"
        )


def sync(
    ctx: Context,
    settings: RunSettings,
    *,
    prune: bool = False,
    purge: bool = False,
    dry_run: bool = False,
    make_progress=None,
    shard: str | None = None,
    announce: Callable[[str], None] | None = None,
    confirm: Callable[[list[str]], bool] | None = None,
) -> rpt.Report:
    """Reconcile the registry with the existing stacks: deploy new targets, update
    changed ones, and with --prune offboard stacks whose tenant (or its
    connection to that environment) is gone or disabled: destroy, then remove
    the stack; the tenant database is kept unless --purge.

    What is offboarded is decided from the whole registry: --prune refuses a
    shard (--shard or JOB_COMPLETION_*) and an empty registry; only
    ``<tenant id>.<environment>`` stacks are pruned, others are reported; the
    stacks are listed, limited and confirmed first (guard_destroy).
    Without --prune a shard deploys its own targets only, and says so."""
    from runner import engine

    what = "sync --prune --purge" if purge else "sync --prune"
    registry = load(ctx)
    if prune:
        refuse_shard(what, shard)
        if not registry.tenants:
            raise UsageProblem(
                f"{what}: the registry lists no tenants, so every stack would be offboarded; "
                f"refused (nothing was changed)"
            )
    in_shard = shard_in_effect(shard)
    fleet = Fleet(ctx.project_dir, state_dir=ctx.runner_dir, backend=ctx.backend_url)
    existing = set(engine.list_stacks(fleet.settings)) - {SHARED_STACK}
    orphans, unmanaged = offboard_candidates(registry, existing)
    if prune and not dry_run:
        guard_destroy(orphans, what, settings, announce=announce, confirm=confirm)
    selectors = Selectors(all_tenants=True, shard=shard)

    def explain(report: rpt.Report) -> None:
        if in_shard:
            report.notes.append(
                f"shard {in_shard[0]}/{in_shard[1]}: only this shard's targets were deployed; "
                f"offboarding (--prune) is decided from the whole registry and never sharded"
            )
        if unmanaged:
            report.notes.append(
                f"{len(unmanaged)} stack(s) not named <tenant>.<environment> of this registry, "
                f"left alone (never pruned): {', '.join(unmanaged)}"
            )

    if dry_run:
        report = fleet_run(ctx, selectors, replace(settings, operation="up", skip_unchanged=math.inf, plan_only=True))
        for row in report.targets:
            if row.details.get("plan") == "deploy":
                row.details["plan"] = "update" if row.stack in existing else "create"
            elif row.status == rpt.SKIPPED:
                row.details["plan"] = "in sync" if row.error and row.error.startswith("unchanged") else row.error
        for stack in orphans:
            tenant_id, _, env = stack.partition(".")
            report.add(
                rpt.TargetResult(
                    tenant_id,
                    env,
                    stack,
                    "sync",
                    rpt.SKIPPED,
                    details={"plan": "offboard" if prune else "offboard (needs --prune)"},
                )
            )
        report.command = "sync"
        report.notes.append("dry run: nothing was changed; each target's plan is in details.plan")
        if prune and len(orphans) > settings.max_destroy:
            report.notes.append(
                f"{what} would refuse: {len(orphans)} stack(s) to offboard, above --max-destroy {settings.max_destroy}"
            )
        explain(report)
        return report
    # Deploy new and changed targets: those whose fingerprint equals their last good deploy are skipped.
    report = fleet_run(
        ctx, selectors, replace(settings, operation="up", skip_unchanged=math.inf), make_progress=make_progress
    )
    report.command = "sync"
    explain(report)
    if orphans and prune:
        offboard(ctx, fleet, orphans, report, purge=purge, settings=settings)
    elif orphans:
        report.notes.append(
            f"{len(orphans)} stack(s) not in the registry (offboard with --prune): {', '.join(orphans)}"
        )
    return report


def offboard(
    ctx: Context, fleet: Fleet, stacks: list[str], report: rpt.Report, *, purge: bool, settings: RunSettings
) -> None:
    """Destroy and remove stacks of tenants that left; --purge also deletes their database."""
    with open_ledger(ctx) as ledger:
        run = Run(ledger, replace(settings, operation="destroy"), report=report)
        jobs = []
        for stack in stacks:
            tenant_id, _, env = stack.partition(".")
            last = ledger.last_good_release(stack)
            config = dict(last.config_snapshot or {}) if last else {}
            jobs.append(
                Job(tenant_id, env, stack, "destroy", config, {}, remove_stack=True, details={"offboard": True})
            )
        with fleet.interruptible(report):
            if purge:  # the database is retained on destroy unless purge_data was set at the last up
                run.add(
                    fleet.run_batch(
                        [
                            replace(j, operation="up", remove_stack=False, config={**j.config, "purge_data": True})
                            for j in jobs
                            if j.config
                        ],
                        run,
                    )
                )
            run.add(fleet.run_batch(jobs, run))
        run.finish(close_row=False)  # recorded under the sync's run, which is already closed


def rerun_targets(ledger, targets: list, run_ref: str) -> list:
    """The targets that failed, were locked or were not started in that run (`last`: the newest)."""
    run_id = ledger.last_run_id() if run_ref == "last" else run_ref
    if run_id is None or ledger.run(run_id) is None:
        raise UsageProblem(f"--rerun-failed: no run {run_ref!r} in the ledger")
    failed = {row.stack for row in ledger.failed_targets(run_id)}
    return [t for t in targets if t.stack in failed]


def plan_rollbacks(fleet: Fleet, ledger, jobs: list[Job], to: str | None, commit: str | None):
    """Each target's rollback job; targets with nothing to return to are reported failed."""
    from runner import releases

    planned, impossible = [], []
    for job in jobs:
        try:
            row = releases.rollback_point(ledger, job.stack, to=to)
            program = releases.program_at(
                fleet.project_dir,
                fleet.state_dir,
                row.program_commit,
                commit,
                row=row,
                fingerprint=job.program_fingerprint,
            )
        except releases.RollbackImpossible as exc:
            impossible.append((job, str(exc)))
            continue
        planned.append(releases.rollback_job(job, row, program))
    return planned, impossible


def remediate(fleet: Fleet, run: Run, jobs: list[Job], how: str) -> None:
    """Fix what the drift check found, then check again: the report shows the
    drift before, the remediation, and the drift after, for each fixed target."""
    report = run.report
    wanted = {rpt.DRIFTED, rpt.DRIFTED_PENDING} | ({rpt.PENDING} if how == "up" else set())
    before = {t.stack: t for t in report.targets if t.operation == "drift" and t.status in wanted}
    todo = [j for j in jobs if j.stack in before]
    if not todo:
        return
    if how == "up":
        todo = [remediation_job(fleet, run.ledger, j) for j in todo]
    with fleet.interruptible(report):
        run.add(fleet.run_batch([replace(j, operation=how, refresh=True) for j in todo], run))
        fixed = {t.stack for t in report.targets if t.operation == how and t.status == rpt.SUCCEEDED}
        for stack in fixed:
            before[stack].details["superseded"] = True
        run.add(
            fleet.run_batch([replace(j, details={**j.details, "after": how}) for j in todo if j.stack in fixed], run)
        )


REMEDIATED = ".remediated-"


def remediation_job(fleet: Fleet, ledger, job: Job) -> Job:
    """`drift --remediate up` deploys the current program and registry config onto the
    target's deployed release. When that is exactly what the deployed release had
    (same fingerprint: a repair of out-of-band changes), it keeps the label; otherwise
    it gets its own label, `<deployed release>.remediated-<fingerprint>`, so the ledger
    never files new config under the old release (a rollback to that release would
    deploy it) and the deployed `release` output says what happened."""
    last = ledger.last_good_release(job.stack) if ledger is not None else None
    if last is not None and last.config_fingerprint == job.config_fingerprint:
        return job
    base = str(job.config.get("release") or "unversioned").split(REMEDIATED)[0]
    label = f"{base}{REMEDIATED}{str(job.config_fingerprint or '')[:8]}"
    config = {**job.config, "release": label}
    fingerprint = config_fingerprint(
        config, dict(job.secret_values), fleet.master, program_fingerprint(fleet.project_dir)
    )
    return replace(job, config=config, config_fingerprint=fingerprint, details={**job.details, "remediation_of": base})


def history(ctx: Context, tenant: str, env: str, limit: int = 50) -> list:
    """The target's operations, newest first, from the ledger."""
    registry = load(ctx)
    target = select(registry, Selectors(tenants=(tenant,), envs=(env,))).targets
    stack = target[0].stack if target else f"{tenant}.{env}"
    with open_ledger(ctx) as ledger:
        return ledger.history(stack, limit=limit)


def merged_report(ctx: Context, run_id: str | None) -> rpt.Report:
    """One report for a run from the ledger: all its shards, each target's final row."""
    with open_ledger(ctx) as ledger:
        run_id = run_id or ledger.last_run_id()
        run = ledger.run(run_id) if run_id else None
        if run is None:
            raise UsageProblem(f"no run {run_id!r} in the ledger {ctx.ledger_url.split('@')[-1]}")
        rows = ledger.run_operations(run_id)
    report = rpt.Report(run_id=run_id, command=run.command, release=run.release, started=run.started, ended=run.ended)
    # Each target's outcome is its last row of the run (a lock wait leaves earlier `locked` rows; a
    # failure followed by its rollback keeps both); the shared stack and recovery steps are not targets.
    last = {}
    for row in rows:
        if row.stack != SHARED_STACK and row.operation != "recover":
            last[(row.stack, "rollback" if row.operation == "rollback" else "target")] = row
    for row in sorted(last.values(), key=lambda r: r.id):
        report.add(
            rpt.TargetResult(
                row.tenant,
                row.environment or "",
                row.stack,
                row.operation,
                row.status,
                changes=row.changes or {},
                started=row.started,
                ended=row.ended,
                error=row.error,
                error_resource=row.error_resource,
                error_component=row.error_component,
                details=row.details or {},
            )
        )
    return report


def outputs(ctx: Context, tenant: str, env: str) -> dict[str, Any]:
    registry = load(ctx)
    selection = select(registry, Selectors(tenants=(tenant,), envs=(env,)))
    if not selection.targets:
        raise UsageProblem(f"tenant {tenant!r} is not connected to environment {env!r} (or is disabled)")
    target = selection.targets[0]
    fleet = Fleet(ctx.project_dir, state_dir=ctx.runner_dir, backend=ctx.backend_url)
    job = Job(target.tenant, target.environment, target.stack, "outputs", {}, {})
    result = fleet.run_job(job, Run(None, RunSettings("outputs"), run_id="outputs"))  # nothing recorded
    if result.status != rpt.SUCCEEDED:
        raise CommandProblem(f"{target.stack}: {result.error_line}")
    return result.outputs


# --------------------------------------------------------------------------- the plain CLI (#19)


@dataclass(frozen=True)
class PulumiEnvironment:
    """What the plain `pulumi` CLI needs to work on one stack (`runner env`, `runner pulumi`).

    ``env`` holds that stack's passphrase: the whole object is a secret."""

    stack: str
    directory: Path  # where `pulumi -s STACK` finds the runner's stack config
    env: dict[str, str]
    path: list[str]  # directories to put first on PATH
    unset: tuple[str, ...] = ("PULUMI_CONFIG_PASSPHRASE_FILE",)  # would compete with the passphrase

    def shell_lines(self) -> list[str]:
        import shlex

        lines = [f"export {name}={shlex.quote(value)}" for name, value in sorted(self.env.items())]
        lines.append("export PATH=" + ":".join(shlex.quote(p) for p in self.path) + ':"$PATH"')
        lines += [f"unset {name}" for name in self.unset]
        lines.append(f"# stack {self.stack}: run `pulumi ... -s {self.stack}` in {shlex.quote(str(self.directory))}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "directory": str(self.directory),
            "env": dict(self.env),
            "path_prepend": list(self.path),
            "unset": list(self.unset),
        }

    def child_environment(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` (the caller's environment) with this one applied; the
        master passphrase is not passed on to the CLI and the program it runs."""
        drop = {*self.unset, "RUNNER_PASSPHRASE", "RUNNER_PASSPHRASE_FILE"}
        env = {k: v for k, v in base.items() if k not in drop}
        env.update(self.env)
        env["PATH"] = os.pathsep.join([*self.path, *([base["PATH"]] if base.get("PATH") else [])])
        return env


def pulumi_stack_name(ctx: Context, tenant: str | None, env: str | None, stack: str | None) -> str:
    """One stack: `--tenant T --env E` (a registry target, enabled or not), or
    `--stack shared` / a registry stack name; anything else is a usage problem."""
    if stack and (tenant or env):
        raise UsageProblem("give either --stack or --tenant with --env, not both")
    if not stack and not (tenant and env):
        raise UsageProblem("one stack: give --tenant T --env E, or --stack shared")
    registry = load(ctx)
    if stack:
        if stack == SHARED_STACK or stack in registry.environment_names:
            return stack
        tenant, dot, env = stack.partition(".")
        if not dot:
            raise UsageProblem(f"--stack {stack}: not a stack of this registry (use shared or TENANT.ENV)")
    selection = select(registry, Selectors(tenants=(tenant,), envs=(env,)))
    found = selection.targets + [t for t, _ in selection.skipped]
    if not found:
        raise UsageProblem(f"tenant {tenant!r} is not connected to environment {env!r}")
    return found[0].stack


def pulumi_environment(
    ctx: Context, tenant: str | None = None, env: str | None = None, stack: str | None = None
) -> PulumiEnvironment:
    """The environment of the plain `pulumi` CLI for one stack (the engine the
    runner uses, its backend, that stack's passphrase, its stack config)."""
    from runner import engine

    name = pulumi_stack_name(ctx, tenant, env, stack)
    fleet = Fleet(ctx.project_dir, state_dir=ctx.runner_dir, backend=ctx.backend_url)
    settings = fleet.settings
    return PulumiEnvironment(
        stack=name,
        directory=engine.plain_cli_directory(settings),
        env=engine.plain_cli_environment(settings, name, engine.stack_passphrase(fleet.master, name)),
        path=engine.plain_cli_path(settings),
    )


def run_pulumi(
    ctx: Context, args: Sequence[str], tenant: str | None = None, env: str | None = None, stack: str | None = None
) -> int:
    """Run the plain `pulumi ARGS` on one stack with its environment, in the
    directory where its stack config is found; returns the CLI's exit code."""
    target = pulumi_environment(ctx, tenant, env, stack)
    child = target.child_environment(dict(os.environ))
    pulumi = str(Path(target.path[0]) / "pulumi")
    try:
        return subprocess.run([pulumi, *args], env=child, cwd=target.directory).returncode
    except KeyboardInterrupt:
        return rpt.EXIT_INTERRUPTED
