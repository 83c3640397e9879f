"""The `runner` command line. Thin: each command parses options and calls one
function of runner.ops; exit codes come from runner.report."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

from runner import report as rpt

if TYPE_CHECKING:
    from runner import ops
from runner.names import BACKEND_SCHEMES, SHARED_STACK


class RunnerGroup(click.Group):
    def format_epilog(self, ctx, formatter):
        with formatter.section("Exit codes"):
            formatter.write_dl([(str(code), meaning) for code, meaning in rpt.EXIT_CODES.items()])


class UsageFailure(click.ClickException):
    """Bad input: printed as one message per problem, exit code 2, no traceback."""

    exit_code = rpt.EXIT_USAGE

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


class CommandFailure(click.ClickException):
    exit_code = rpt.EXIT_FAILED

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def _context(kw) -> ops.Context:
    from runner import ops

    return ops.Context(
        registry=kw.pop("registry", None), backend=kw.pop("backend", None), ledger=kw.pop("ledger", None)
    )


def common_options(f):
    """--registry, --backend, --ledger (shared by every command that reads the fleet)."""
    f = click.option(
        "--registry", metavar="PATH|URL", help="Tenant registry (default stacks/tenants.yaml; env RUNNER_REGISTRY)."
    )(f)
    f = click.option(
        "--backend",
        metavar="URL",
        help="Pulumi state backend: file://, postgres://, s3:// (env RUNNER_BACKEND; default .runner/state).",
    )(f)
    f = click.option(
        "--ledger", metavar="URL", help="Ledger database: sqlite:///PATH or postgresql://... (env RUNNER_LEDGER)."
    )(f)
    return f


def _registry_for_completion(ctx):
    from runner import ops
    from runner import registry as reg

    source = ctx.params.get("registry") or os.environ.get("RUNNER_REGISTRY") or str(ops.DEFAULT_REGISTRY)
    return reg.load_registry(source)


def complete_tenants(ctx, param, incomplete):
    """Shell completion of --tenant: the registry's tenant ids (nothing when it cannot be read)."""
    try:
        return [t.id for t in _registry_for_completion(ctx).tenants if t.id.startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the user's shell
        return []


def complete_envs(ctx, param, incomplete):
    """Shell completion of --env: the registry's environments."""
    try:
        return [e for e in _registry_for_completion(ctx).environment_names if e.startswith(incomplete)]
    except Exception:
        return []


def selector_options(f):
    f = click.option(
        "--tenant",
        "tenants",
        multiple=True,
        metavar="T",
        shell_complete=complete_tenants,
        help="Select a tenant (repeatable).",
    )(f)
    f = click.option("--all-tenants", is_flag=True, help="Select every enabled tenant.")(f)
    f = click.option(
        "--env",
        "envs",
        multiple=True,
        metavar="E",
        shell_complete=complete_envs,
        help="Restrict to an environment (repeatable).",
    )(f)
    f = click.option(
        "--tag",
        "tags",
        multiple=True,
        metavar="KEY=VALUE",
        help="Only tenants with this tag (repeatable, all must match); alone, selects the enabled tenants with it.",
    )(f)
    f = click.option(
        "--exclude-tenant", "exclude", multiple=True, metavar="T", help="Leave a tenant out (repeatable)."
    )(f)
    f = click.option(
        "--untenanted",
        is_flag=True,
        help="An untenanted deployment to --env (refused where the environment requires a tenant).",
    )(f)
    f = click.option(
        "--shard",
        metavar="I/N",
        help="Run only shard I of N (0-based; default JOB_COMPLETION_INDEX/JOB_COMPLETION_COUNT when set).",
    )(f)
    return f


def output_options(f):
    f = click.option(
        "--json", "as_json", is_flag=True, help="Write exactly one JSON document on stdout; human text goes to stderr."
    )(f)
    f = click.option("--report-json", type=click.Path(dir_okay=False), help="Also write the JSON report to this file.")(
        f
    )
    f = click.option(
        "--junit", type=click.Path(dir_okay=False), help="Write a JUnit XML report (one testcase per target)."
    )(f)
    f = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Progress lines as text or JSON (machine logs).",
    )(f)
    f = click.option(
        "--run-id",
        help="Run id shared by the shards of one pipeline (default: the CI system's run id, else a fresh one).",
    )(f)
    f = click.option(
        "--notify",
        multiple=True,
        metavar="slack:URL|webhook:URL",
        help="Send one message at the end of the run (repeatable; env RUNNER_NOTIFY, space-separated).",
    )(f)
    return f


class Concurrency(click.ParamType):
    """--concurrency: a number >= 1, or `auto` (runner.fleet.auto_concurrency)."""

    name = "concurrency"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is neither a number >= 1 nor auto", param, ctx)
        return number


def fleet_options(f):
    """--concurrency, --lock-timeout, --retries: no default here, ops.RunSettings holds them (one place)."""
    f = click.option(
        "--concurrency",
        type=Concurrency(),
        metavar="N|auto",
        help="Targets run at once, never exceeded; auto: 1.5 per core (4 when the targets wait on a cloud API), bounded by free memory [default: CPU cores].",
    )(f)
    f = click.option(
        "--lock-timeout",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        help="Seconds to wait for a stack locked by a live operation [default: 120].",
    )(f)
    f = click.option(
        "--retries",
        type=click.IntRange(min=0),
        metavar="N",
        help="Run a target again after a transient engine error (throttling, timeout, reset connection), up to N more times with backoff; every attempt is recorded [default: 2].",
    )(f)
    return f


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(str(text).split())[:limit]


def check_backend_url(url: str | None, source: str) -> None:
    """A state backend URL the engine would misread (an unknown scheme is taken for a
    Pulumi Cloud login) is refused before anything runs."""
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in BACKEND_SCHEMES or not (parts.netloc or (parts.scheme == "file" and parts.path)):
        raise UsageFailure(
            f"{source} {url!r}: unsupported state backend URL: use " + ", ".join(BACKEND_SCHEMES.values())
        )


def handle_problems(f):
    """Our own exceptions become exit codes here, in one list: every user error is
    one line on stderr (`error: ...`), exit 2 when nothing was run, else 1."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from runner import engine, ops
        from runner.bootstrap import EngineUnavailable

        if "backend" in kwargs:
            check_backend_url(kwargs["backend"], "--backend")
            if kwargs["backend"] is None:
                check_backend_url(os.environ.get("RUNNER_BACKEND") or None, "RUNNER_BACKEND")
        try:
            return f(*args, **kwargs)
        except ops.UsageProblem as exc:
            raise UsageFailure(str(exc)) from None
        except ops.CommandProblem as exc:
            raise CommandFailure(str(exc)) from None
        except EngineUnavailable as exc:  # no engine at the pinned version, and none could be built
            raise CommandFailure(f"engine: {_one_line(exc)}") from None
        except engine.EngineError as exc:  # outside any target (listing stacks, reading outputs)
            raise CommandFailure(f"engine: {_one_line(exc.message)}") from None
        except Exception as exc:
            from sqlalchemy.exc import DBAPIError, SQLAlchemyError

            from runner.ledger import LedgerError

            if isinstance(exc, DBAPIError) and exc.orig is not None:  # the driver's words, not SQLAlchemy's wrapper
                raise CommandFailure(f"ledger: {type(exc.orig).__name__}: {_one_line(exc.orig)}") from None
            if isinstance(exc, (LedgerError, SQLAlchemyError)):  # before/after the run: one line, exit 1
                raise CommandFailure(f"ledger: {type(exc).__name__}: {_one_line(exc)}") from None
            raise

    return wrapper


def emit_report(
    report: rpt.Report, *, as_json: bool, report_json: str | None, junit: str | None, notify_targets=()
) -> None:
    from runner.progress import print_summary

    # The files first: whatever text a target's error holds, a failing terminal
    # summary must not cost the JSON report, JUnit, step summary or notification.
    if report_json:
        report.write_json(report_json)
    if junit:
        report.write_junit(junit)
    report.write_step_summary()
    try:
        print_summary(report)
    except Exception as exc:  # noqa: BLE001 - the summary is a view; the reports above are the record
        click.echo(
            f"summary could not be shown ({type(exc).__name__}: {exc}); "
            f"{report.counts['total']} target(s), exit code {report.exit_code}",
            err=True,
        )
    if notify_targets:
        from runner.notify import notify

        for outcome in notify(report, notify_targets):
            if not outcome.ok:  # reported, never fails the run
                click.echo(f"notification failed: {outcome}", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    sys.exit(report.exit_code)


def _on_terminal() -> bool:
    return sys.stdin.isatty()


def destroy_guard_callbacks() -> dict:
    """For ops.guard_destroy: the list of stacks goes to stderr (stdout stays pure
    --json); on a terminal the user confirms; off a terminal --yes is needed."""

    def announce(text: str) -> None:
        click.echo(text, err=True)

    def confirm(stacks: list[str]) -> bool:
        return click.confirm(f"Destroy these {len(stacks)} stack(s)?", default=False, err=True)

    return {"announce": announce, "confirm": confirm if _on_terminal() else None}


def max_destroy_option(f):
    return click.option(
        "--max-destroy",
        type=click.IntRange(min=0),
        default=None,
        metavar="N",
        help="Refuse (exit 2, nothing destroyed) to destroy more than N stacks in one run "
        "[default: 5; raise it here on the command line].",
    )(f)


def make_progress_factory(log_format: str, operation: str | None = None):
    from runner.progress import LineProgress, LiveProgress

    def make(run_id: str, total: int):
        if log_format == "text" and sys.stderr.isatty():
            return LiveProgress(run_id, total, operation=operation)
        return LineProgress(run_id, log_format)

    return make


def notify_targets(specs) -> list:
    from runner.notify import NotifyError, parse_targets

    specs = list(specs) or os.environ.get("RUNNER_NOTIFY", "").split()
    try:
        return parse_targets(specs) if specs else []
    except NotifyError as exc:
        raise UsageFailure(f"--notify: {exc}") from None


def run_settings(operation: str, kw: dict) -> ops.RunSettings:
    """The options of a fleet command as ops.RunSettings: every option named like one of its
    fields is passed through; an option not given (None) keeps RunSettings' default."""
    import dataclasses

    from runner import ops

    names = {f.name for f in dataclasses.fields(ops.RunSettings)} - {"operation", "argv"}
    given = {k: v for k, v in kw.items() if k in names and v is not None}
    return ops.RunSettings(operation=operation, argv=tuple(sys.argv[1:]), **given)


def selectors(kw: dict) -> ops.Selectors:
    from runner import ops

    return ops.Selectors(
        tenants=kw["tenants"],
        all_tenants=kw["all_tenants"],
        envs=kw["envs"],
        tags=kw["tags"],
        exclude=kw["exclude"],
        untenanted=kw["untenanted"],
        shard=kw["shard"],
    )


def run_fleet_command(operation: str, kw: dict, guard: dict | None = None) -> None:
    from runner import ops

    targets = notify_targets(kw.pop("notify", ()))
    ctx = _context(kw)
    report = ops.fleet_run(
        ctx,
        selectors(kw),
        run_settings(operation, kw),
        make_progress=make_progress_factory(kw["log_format"], operation),
        **(guard or {}),
    )
    emit_report(report, as_json=kw["as_json"], report_json=kw["report_json"], junit=kw["junit"], notify_targets=targets)


@click.group(cls=RunnerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="runner")
def main():
    """Deploy one Pulumi stack per tenant and environment, across the whole fleet.

    Targets are `<tenant>.<environment>` stacks from the tenant registry
    (stacks/tenants.yaml). Human text goes to stderr; with --json, stdout holds
    exactly one JSON document.
    """


@main.command()
@common_options
@selector_options
@fleet_options
@output_options
@click.option(
    "--release",
    help="Release label (default: the program's commit, the newest commit that changed Pulumi.yaml, stacks/ or components/; -dirty when those differ from it; registry edits are config, not a release).",
)
@click.option(
    "--on-failure",
    type=click.Choice(["continue", "stop", "rollback"]),
    default="continue",
    show_default=True,
    help="continue: isolate failures; stop: start nothing new after the first failure; "
    "rollback: return a failed target to its last good release.",
)
@click.option("--max-failures", type=click.IntRange(min=1), help="Start nothing new after N failures.")
@click.option(
    "--rerun-failed",
    metavar="RUN_ID",
    is_flag=False,
    flag_value="last",
    help="Only the targets that failed or were not started in that run (default: the last run).",
)
@click.option(
    "--ignore-lifecycle", is_flag=True, help="Deploy where the lifecycle gates refuse (recorded in the ledger)."
)
@click.option(
    "--strategy",
    type=click.Choice(["waves", "all-at-once"]),
    help="Override the registry's rollout (default: waves when it has one).",
)
@click.option("--wave", metavar="NAME", help="Run one wave of the rollout only (manual promotion).")
@click.option(
    "--skip-unchanged",
    is_flag=True,
    help="Skip targets whose program, config and release equal their last good deploy, when that deploy or a newer in-sync drift check is younger than --max-age; says per target why it skipped or not.",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=0),
    default=24.0,
    show_default=True,
    metavar="HOURS",
    help="With --skip-unchanged: how old the last good deploy or clean drift check may be.",
)
@click.option(
    "--plans",
    "plans",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Apply exactly the plans `preview --save-plans DIR` saved: exit 2 when the program, registry or a "
    "plan file changed; a target whose state moved fails as a stale plan; no other target is touched.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_problems
def up(skip_unchanged, max_age, **kw):
    """Deploy the selected targets: the shared stack first, then environments in
    promotion order (lifecycle gates), each in the registry's rollout waves."""
    run_fleet_command("up", {**kw, "skip_unchanged": max_age * 3600 if skip_unchanged else None})


@main.command()
@common_options
@selector_options
@fleet_options
@output_options
@click.option("--to", "rollback_to", metavar="RELEASE", help="Go back to this release instead of the last good one.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_problems
def rollback(**kw):
    """Redeploy each target's last good release (or --to RELEASE) with its recorded config and program."""
    run_fleet_command("rollback", kw)


@main.command()
@common_options
@fleet_options
@output_options
@click.option(
    "--prune", is_flag=True, help="Offboard stacks whose tenant is gone or disabled: destroy, then remove the stack."
)
@click.option("--purge", is_flag=True, help="With --prune: also delete the tenants' databases (kept by default).")
@click.option("--dry-run", is_flag=True, help="Show the plan; change nothing.")
@click.option("--release", help="Release label (default: the project's git commit).")
@click.option(
    "--shard",
    metavar="I/N",
    help="Deploy only shard I of N (default JOB_COMPLETION_INDEX/JOB_COMPLETION_COUNT when set); refused with --prune.",
)
@click.option("--yes", is_flag=True, help="With --prune: do not ask before destroying (needed off a terminal).")
@max_destroy_option
@handle_problems
def sync(prune, purge, dry_run, release, shard, yes, max_destroy, **kw):
    """Reconcile the registry with the existing stacks: new tenants deployed, changed
    ones updated, removed or disabled ones offboarded with --prune.

    --prune decides from the whole registry (refused in a shard or with an
    empty registry), prunes only <tenant>.<environment> stacks, lists them
    first, asks (or needs --yes) and refuses more than --max-destroy."""
    from runner import ops

    if purge and not prune:
        raise UsageFailure("--purge goes with --prune")
    targets = notify_targets(kw.pop("notify", ()))
    ctx = _context(kw)
    settings = run_settings("up", {**kw, "release": release, "yes": yes, "max_destroy": max_destroy})
    report = ops.sync(
        ctx,
        settings,
        prune=prune,
        purge=purge,
        dry_run=dry_run,
        shard=shard,
        make_progress=make_progress_factory(kw["log_format"]),
        **destroy_guard_callbacks(),
    )
    emit_report(report, as_json=kw["as_json"], report_json=kw["report_json"], junit=kw["junit"], notify_targets=targets)


@main.command()
@common_options
@selector_options
@fleet_options
@output_options
@handle_problems
def recover(**kw):
    """Remove locks of dead runners on this host and clear pending operations left in the state.

    Without a selector it covers every tenant (it removes only locks whose
    holder is provably dead); never-deployed targets are skipped."""
    run_fleet_command("recover", kw)


@main.command()
@common_options
@click.option("--tenant", required=True, shell_complete=complete_tenants, help="The tenant.")
@click.option("--env", required=True, shell_complete=complete_envs, help="The environment.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@handle_problems
def history(tenant, env, limit, as_json, **kw):
    """A target's operations, newest first: release, status, changes, error."""
    from rich.table import Table
    from rich.text import Text

    from runner import ops
    from runner.progress import console

    rows = ops.history(_context(kw), tenant, env, limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows]))
        return
    table = Table("when", "operation", "release", "status", "changes", "run", "error", title=f"{tenant}.{env}")
    for r in rows:
        table.add_row(
            *map(
                Text,
                (  # ledger text is untrusted: plain Text, never markup
                    r.started.strftime("%Y-%m-%d %H:%M:%S"),
                    r.operation,
                    r.release or "",
                    r.status,
                    rpt.format_changes(r.changes or {}),
                    r.run_id,
                    (r.error or "").splitlines()[0] if r.error else "",
                ),
            )
        )
    console().print(table)


@main.command("report")
@common_options
@output_options
@handle_problems
def report_cmd(**kw):
    """Merge a run's results (--run-id, default: the last run) from the (shared) ledger
    into one summary, JSON and JUnit."""
    from runner import ops

    kw.pop("notify", None)
    kw.pop("log_format", None)
    report = ops.merged_report(_context(kw), kw["run_id"])
    emit_report(report, as_json=kw["as_json"], report_json=kw["report_json"], junit=kw["junit"])


@main.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write a self-contained HTML dashboard.")
@handle_problems
def status(as_json, html_path, **kw):
    """Tenants x environments: release, status, age, last drift (from the ledger; no engine call)."""
    from runner import ops
    from runner import status as st
    from runner.progress import console

    ctx = _context(kw)
    registry = ops.load(ctx)
    with ops.open_ledger(ctx) as ledger:
        fleet = st.fleet_status(ledger, registry)
    if html_path:
        st.write_html(fleet, html_path)
        click.echo(f"wrote {html_path}", err=True)
    if as_json:
        click.echo(fleet.to_json())
        return
    out = console()
    out.print(st.render_table(fleet))
    if (orphans := st.render_orphans_table(fleet)) is not None:
        out.print(orphans)


@main.command()
@common_options
@selector_options
@fleet_options
@output_options
@click.option("--detailed-exitcode", is_flag=True, help="Exit 3 when any target has changes.")
@click.option(
    "--save-plans",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Save each changed target's update plan, DIR/manifest.json and DIR/summary.md (a pull-request "
    "comment) for `up --plans DIR`.",
)
@handle_problems
def preview(**kw):
    """Show what `up` would change, per target."""
    run_fleet_command("preview", kw)


@main.command()
@common_options
@selector_options
@fleet_options
@output_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_problems
def refresh(**kw):
    """Accept reality into the state of the selected targets."""
    run_fleet_command("refresh", kw)


@main.command()
@common_options
@selector_options
@fleet_options
@output_options
@click.option("--remove", "remove_stacks", is_flag=True, help="Also remove the stacks after destroying them.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@max_destroy_option
@handle_problems
def destroy(**kw):
    """Destroy the selected targets' resources (the tenant database is kept).

    Lists the stacks first, asks (or needs --yes off a terminal), refuses more
    than --max-destroy and refuses a shard."""
    if not (kw["tenants"] or kw["all_tenants"] or kw["untenanted"]) or not (kw["tenants"] or kw["envs"]):
        raise UsageFailure("destroy needs explicit selectors: --tenant T (or --all-tenants with --env E)")
    run_fleet_command("destroy", kw, guard=destroy_guard_callbacks())


@main.command()
@common_options
@selector_options
@fleet_options
@output_options
@click.option(
    "--remediate",
    type=click.Choice(["up", "refresh"]),
    help="Then fix: `up` re-applies the code to drifted/pending targets, `refresh` accepts reality into the state.",
)
@handle_problems
def drift(**kw):
    """Compare reality, state and code for each target, without writing state (exit 3 on drift).

    in-sync: reality, state and code agree. drifted: resources changed out of
    band (refresh preview). pending: code or config ahead of the deployment
    (preview). drifted+pending: both.
    """
    run_fleet_command("drift", kw)


@main.command()
@common_options
@click.option("--tenant", required=True, shell_complete=complete_tenants, help="The tenant.")
@click.option("--env", required=True, shell_complete=complete_envs, help="The environment.")
@click.option("--json", "as_json", is_flag=True, help="Print the outputs as one JSON document.")
@handle_problems
def outputs(tenant, env, as_json, **kw):
    """Print one target's stack outputs (secrets masked)."""
    from runner import ops

    values = ops.outputs(_context(kw), tenant, env)
    if as_json:
        click.echo(json.dumps(values, indent=2))
    else:
        for key, value in sorted(values.items()):
            click.echo(f"{key}: {json.dumps(value) if not isinstance(value, str) else value}")


@main.group()
def tenants():
    """Inspect and validate the tenant registry."""


@tenants.command("list")
@click.option("--registry", metavar="PATH|URL", help="Tenant registry (default stacks/tenants.yaml).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@handle_problems
def tenants_list(registry, as_json):
    """List tenants: id, name, environments, tags, enabled."""
    from rich.table import Table
    from rich.text import Text

    from runner import ops
    from runner import registry as reg
    from runner.progress import console

    rows = reg.tenants_table(ops.load(ops.Context(registry=registry)))
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table("id", "name", "environments", "tags", "enabled")
    for row in rows:
        table.add_row(
            *map(
                Text,
                (
                    row["id"],
                    row["name"],
                    ", ".join(row["environments"]),
                    ", ".join(f"{k}={v}" for k, v in row["tags"].items()),
                    "yes" if row["enabled"] else "no",
                ),
            )
        )
    console().print(table)


@tenants.command("validate")
@click.option("--registry", metavar="PATH|URL", help="Tenant registry (default stacks/tenants.yaml).")
@handle_problems
def tenants_validate(registry):
    """Validate the registry: every problem with file:line, exit 2; or a one-line OK."""
    from runner import ops
    from runner import registry as reg

    click.echo(reg.registry_summary(ops.load(ops.Context(registry=registry))), err=True)


# --------------------------------------------------------------------------- the plain CLI, doctor (#19)


def one_stack_options(f):
    """--tenant T --env E or --stack S; fleet selectors are accepted only to be refused clearly."""
    f = click.option(
        "--tenant",
        "tenants",
        multiple=True,
        metavar="T",
        shell_complete=complete_tenants,
        help="The tenant (with --env).",
    )(f)
    f = click.option(
        "--env",
        "envs",
        multiple=True,
        metavar="E",
        shell_complete=complete_envs,
        help="The environment (with --tenant).",
    )(f)
    f = click.option(
        "--stack",
        metavar="NAME",
        shell_complete=lambda c, p, i: [s for s in [SHARED_STACK] if s.startswith(i)],
        help="A stack by name instead: shared, or TENANT.ENV.",
    )(f)
    for flag in ("--all-tenants", "--untenanted"):
        f = click.option(flag, is_flag=True, hidden=True, expose_value=True)(f)
    for name in ("--tag", "--exclude-tenant", "--shard"):
        f = click.option(name, multiple=True, hidden=True)(f)
    return f


def _one_stack(kw) -> dict:
    fleet = [
        f"--{k.replace('_', '-')}"
        for k in ("all_tenants", "untenanted", "tag", "exclude_tenant", "shard")
        if kw.pop(k, None)
    ]
    tenants, envs = kw.pop("tenants"), kw.pop("envs")
    if fleet or len(tenants) > 1 or len(envs) > 1:
        given = ", ".join(fleet) or "more than one --tenant/--env"
        raise UsageFailure(f"one stack only: {given} selects a fleet; give --tenant T --env E or --stack shared")
    return {"tenant": tenants[0] if tenants else None, "env": envs[0] if envs else None, "stack": kw.pop("stack")}


@main.command("env")
@common_options
@one_stack_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object: stack, directory, env, path_prepend, unset.")
@handle_problems
def env_cmd(as_json, **kw):
    """Print the shell lines that make the plain `pulumi` CLI work on one stack.

    \b
        eval "$(runner env --tenant T --env E)"
        pulumi preview -s T.E

    The output is a SECRET: it holds that stack's passphrase (never the
    master passphrase). Do not log it or paste it anywhere. It sets
    PULUMI_BACKEND_URL, PULUMI_CONFIG_PASSPHRASE, PULUMI_PYTHON_CMD, the
    offline switches (PULUMI_SKIP_UPDATE_CHECK, ...) and puts the engine's bin
    directory first on PATH. The last line names the directory to run
    `pulumi` in: the project directory with the default state dir, else the
    generated program directory that holds the stack config.
    """
    from runner import ops

    stack = _one_stack(kw)
    target = ops.pulumi_environment(_context(kw), **stack)
    if as_json:
        click.echo(json.dumps(target.to_dict()))
    else:
        click.echo("\n".join(target.shell_lines()))


@main.command("pulumi", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@common_options
@one_stack_options
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@handle_problems
def pulumi_cmd(args, **kw):
    """Run the plain `pulumi ARGS` on one stack with the environment of `runner env`.

    \b
        runner pulumi --tenant T --env E -- stack export
        runner pulumi --stack shared -- stack ls

    It runs in the directory where that stack's config is found (see `runner
    env`): give file arguments as absolute paths. The exit code is the
    CLI's. One stack only: fleet selectors are refused (exit 2).
    """
    from runner import ops

    stack = _one_stack(kw)
    if not args:
        raise UsageFailure("give the pulumi arguments after --, e.g. runner pulumi --tenant T --env E -- stack ls")
    sys.exit(ops.run_pulumi(_context(kw), list(args), **stack))


@main.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok, checks (name, ok, detail).")
@handle_problems
def doctor(as_json, **kw):
    """Check the set-up, one line per check; exit 0 when all pass, 1 otherwise.

    The engine (version, where it came from), the Python language host and
    dynamic-provider script, the state backend (reachable, writable), the
    ledger, the master passphrase (present, non-empty, mode 0600; never
    printed), the registry (valid, tenants) and the PostgreSQL driver when a
    postgres URL is used. Builds nothing and needs no internet.
    """
    from runner import doctor as dr

    checks = dr.run_checks(_context(kw))
    ok = all(c.ok for c in checks)
    if as_json:
        click.echo(json.dumps({"ok": ok, "checks": [c.to_dict() for c in checks]}))
    else:
        for check in checks:
            click.echo(check.line())
    sys.exit(rpt.EXIT_OK if ok else rpt.EXIT_FAILED)
