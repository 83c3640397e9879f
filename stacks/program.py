"""The Pulumi program: the ``shared`` stack and the tenant stacks.

``__main__.py`` calls :func:`main` with the stack name; unit tests call it
under ``pulumi.runtime.set_mocks``. The stack name decides what is built:

* ``shared``: one Git repository per service (identity = service), exports
  ``git_urls``.
* ``<tenant>.<environment>``: one CloudAccount used by the Backend and the
  Frontend (the frontend is deployed after the backend and its migrations),
  ``git_urls`` read from ``shared`` through a StackReference.
* ``<environment>`` (no dot): an untenanted deployment (tenant id
  ``untenanted``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pulumi

from components.common import (
    account_email,
    account_id_for,
    account_name,
    email_domain_problem,
    load_files,
    load_migrations,
    resource_tags,
)

SHARED_STACK = "shared"
SERVICES = ("backend", "frontend")
UNTENANTED = "untenanted"
NAME_PART = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")
PLATFORMS = ("local", "aws")

#: Why db_password is refused on aws (the registry says the same).
AWS_DB_PASSWORD_REFUSED = (
    "db_password is not used on the aws platform: the database's master password is managed by RDS "
    "and the app's database user gets a generated password kept in the tenant account; remove it"
)

ADOPTED_ACCOUNT = re.compile(r"[a-z][a-z0-9-]{1,38}[a-z0-9]=[0-9]{12}")

#: The aws platform's PostgreSQL migrations, a subfolder of migrations_dir.
POSTGRESQL_MIGRATIONS = "postgresql"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The directory holding Pulumi.yaml: relative config paths resolve here, never against cwd."""


class StackNameError(ValueError):
    pass


class ForbiddenStackReference(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    stack: str
    tenant_id: str
    environment: str
    tenanted: bool

    @property
    def is_shared(self) -> bool:
        return self.stack == SHARED_STACK


def parse_stack(stack: str) -> Target:
    """Validate the stack name (each dot-separated part against NAME_PART)."""
    parts = stack.split(".")
    if len(parts) > 2 or not all(NAME_PART.match(p) for p in parts):
        raise StackNameError(
            f"invalid stack name {stack!r}: expected 'shared', '<tenant>.<environment>' or "
            f"'<environment>', each part matching {NAME_PART.pattern}"
        )
    if stack == SHARED_STACK:
        return Target(stack, "", "", False)
    if len(parts) == 1:
        return Target(stack, UNTENANTED, parts[0], False)
    return Target(stack, parts[0], parts[1], True)


def stack_reference(target_stack: str, name: str = "shared") -> pulumi.StackReference:
    """The one way the program reads another stack: only ``shared`` is allowed,
    so a tenant stack can never read another tenant's outputs."""
    if target_stack != SHARED_STACK:
        raise ForbiddenStackReference(
            f"stack reference to {target_stack!r} refused: a stack may only reference {SHARED_STACK!r}"
        )
    # DIY backends name stacks organization/<project>/<stack>.
    org = pulumi.get_organization() or "organization"
    return pulumi.StackReference(name, stack_name=f"{org}/{pulumi.get_project()}/{target_stack}")


def shared_git_urls(settings: Settings) -> Any:
    """``git_urls`` of the shared stack. Before the shared stack's first deploy
    a preview (``shared_planned``, set by the runner) reads them as unknown, as
    the engine shows values an update computes; outside a preview that is refused."""
    if settings.shared_planned:
        if not pulumi.runtime.is_dry_run():
            raise ValueError("config shared_planned is for previews only: deploy the shared stack first")
        return pulumi.Output.from_input(pulumi.output.UNKNOWN)
    return stack_reference(SHARED_STACK).get_output("git_urls")


def resolve(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJECT_ROOT / p)


@dataclass(frozen=True)
class Settings:
    platform: str = "local"
    app_version: str = "1.0.0"
    region: str = "us-east-1"
    domain: str = ""
    platform_root: str = ".runner/platform"
    migrations_dir: str = "stacks/migrations"
    release: str = "unreleased"
    tenant_name: str = ""
    purge_data: bool = False
    account_email_domain: str = ""
    smoke_text: str = ""
    shared_planned: bool = False
    organizational_unit_id: str = ""
    account_ids: tuple[str, ...] = ()
    """``<environment>=<account id>`` entries: accounts adopted, not created."""
    hosted_zone_id: str = ""
    domain_configured: bool = False
    """``domain`` was set in config (on aws: a custom domain with TLS)."""
    simulated_latency_ms: str = ""
    simulated_throttle_rate: str = ""
    """The local platform's simulated cloud API: its providers read these from
    the stack config themselves (never resource inputs, so changing them changes
    nothing); the program only checks them, to fail once with a clear message."""

    @classmethod
    def from_config(cls, config: pulumi.Config) -> Settings:
        defaults = cls()
        values: dict[str, Any] = {}
        for key in (
            "platform",
            "app_version",
            "region",
            "domain",
            "platform_root",
            "migrations_dir",
            "release",
            "tenant_name",
            "account_email_domain",
            "smoke_text",
            "organizational_unit_id",
            "hosted_zone_id",
            "simulated_latency_ms",
            "simulated_throttle_rate",
        ):
            value = config.get(key)
            values[key] = value if value else getattr(defaults, key)
        values["purge_data"] = bool(config.get_bool("purge_data") or False)
        values["shared_planned"] = bool(config.get_bool("shared_planned") or False)
        values["domain_configured"] = bool(values["domain"])
        account_ids = config.get_object("account_ids") or []
        if not isinstance(account_ids, list) or not all(isinstance(a, str) for a in account_ids):
            raise ValueError("config account_ids: expected a list of '<environment>=<account id>' strings")
        values["account_ids"] = tuple(account_ids)
        settings = cls(**values)
        if settings.platform not in PLATFORMS:
            raise ValueError(f"config platform={settings.platform!r}: expected one of {', '.join(PLATFORMS)}")
        if settings.platform == "aws":
            # The registry reports these first (with file:line); the program
            # checks again for a stack run with the plain pulumi CLI.
            if config.get("db_password"):
                raise ValueError(f"config {AWS_DB_PASSWORD_REFUSED}")
            for entry in settings.account_ids:
                if not ADOPTED_ACCOUNT.fullmatch(entry):
                    raise ValueError(f"config account_ids: {entry!r} is not '<environment>=<12-digit account id>'")
        return settings

    def adopted_account(self, environment: str) -> str:
        """The account id adopted for ``environment``, or ""."""
        for entry in self.account_ids:
            env, _, account = entry.partition("=")
            if env == environment:
                return account
        return ""


@dataclass
class Deployment:
    """What :func:`main` built (the tests inspect it)."""

    target: Target
    components: dict[str, pulumi.ComponentResource] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


def platform_module(platform: str) -> ModuleType:
    # Imported lazily: the local platform never imports pulumi_aws.
    if platform == "aws":
        import components.aws as module
    else:
        import components.local as module
    return module


def main(stack: str | None = None, config: pulumi.Config | None = None) -> Deployment:
    target = parse_stack(stack or pulumi.get_stack())
    config = config or pulumi.Config()
    settings = Settings.from_config(config)
    platform = platform_module(settings.platform)
    if settings.platform == "local":
        platform.simulation_settings(settings.simulated_latency_ms, settings.simulated_throttle_rate)
    deployment = Deployment(target)
    if target.is_shared:
        _shared(deployment, settings, platform)
    else:
        _tenant(deployment, settings, platform, db_password=config.get_secret("db_password"))
    for key, value in deployment.outputs.items():
        pulumi.export(key, value)
    return deployment


def _shared(deployment: Deployment, settings: Settings, platform: ModuleType) -> None:
    urls = {}
    management = platform.management_provider(settings.region) if settings.platform == "aws" else None
    for service in SERVICES:
        if settings.platform == "aws":
            args = platform.GitRepositoryArgs(
                service=service,
                tags={"service": service, "managed-by": "runner"},
                provider=management,
            )
        else:
            args = platform.GitRepositoryArgs(root=str(resolve(settings.platform_root)), service=service)
        repo = platform.GitRepository(f"repo-{service}", args)
        deployment.components[f"repo-{service}"] = repo
        urls[service] = repo.url
    deployment.outputs.update({"git_urls": urls, "release": settings.release})


def _tenant(
    deployment: Deployment, settings: Settings, platform: ModuleType, db_password: pulumi.Output[str] | None = None
) -> None:
    t = deployment.target
    tenant_name = settings.tenant_name or ("Untenanted" if not t.tenanted else t.tenant_id)
    domain = settings.domain or f"{t.tenant_id}.example.com"
    # Each platform runs the SQL of its own database: SQLite files in the
    # folder itself (local), the PostgreSQL set in its postgresql/ (aws).
    migrations_dir = resolve(settings.migrations_dir)
    if settings.platform == "aws":
        migrations_dir = migrations_dir / POSTGRESQL_MIGRATIONS
    migrations = load_migrations(migrations_dir)
    app_files = load_files(PROJECT_ROOT / "stacks" / "app" / "backend")
    template = (PROJECT_ROOT / "stacks" / "app" / "frontend" / "index.html").read_text(encoding="utf-8")
    git_urls = shared_git_urls(settings)
    common = dict(
        tenant_id=t.tenant_id, environment=t.environment, release=settings.release, app_version=settings.app_version
    )

    if settings.platform == "aws":
        problem = email_domain_problem(settings.account_email_domain)
        if problem:
            raise ValueError(f"config {problem}")
        tags = resource_tags(t.tenant_id, t.environment)
        management = platform.management_provider(settings.region)
        account = platform.CloudAccount(
            "account",
            platform.CloudAccountArgs(
                tenant_id=t.tenant_id,
                environment=t.environment,
                email=account_email(t.tenant_id, t.environment, settings.account_email_domain),
                name=account_name(t.tenant_id, t.environment),
                region=settings.region,
                tags=tags,
                parent_id=settings.organizational_unit_id or None,
                account_id=settings.adopted_account(t.environment) or None,
                management_provider=management,
            ),
        )
        backend = platform.Backend(
            "backend",
            platform.BackendArgs(
                provider=account.provider,
                tags=tags,
                migrations=migrations,
                app_files=app_files,
                purge_data=settings.purge_data,
                **common,
            ),
        )
        frontend = platform.Frontend(
            "frontend",
            platform.FrontendArgs(
                provider=account.provider,
                tags=tags,
                tenant_name=tenant_name,
                domain=domain,
                backend_url=backend.backend_url,
                schema_version=backend.schema_version,
                template=template,
                custom_domain=settings.domain if settings.domain_configured else "",
                hosted_zone_id=settings.hosted_zone_id,
                cert_provider=account.provider_us_east_1,
                dns_provider=management,
                **common,
            ),
            pulumi.ResourceOptions(depends_on=[backend]),
        )
        health_checks: Any = pulumi.Output.all(backend.backend_url, frontend.frontend_url).apply(
            lambda u: (
                [
                    {"name": "backend", "kind": "http", "url": u[0], "expect_status": 200},
                    {"name": "frontend", "kind": "http", "url": u[1], "expect_status": 200, "text": settings.release},
                ]
                + (
                    [{"name": "smoke", "kind": "http", "url": u[1], "expect_status": 200, "text": settings.smoke_text}]
                    if settings.smoke_text
                    else []
                )
            )
        )
    else:
        root = str(resolve(settings.platform_root))
        account = platform.CloudAccount("account", platform.CloudAccountArgs(root=root, tenant_id=t.tenant_id))
        backend = platform.Backend(
            "backend",
            platform.BackendArgs(
                account_dir=account.account_dir,
                migrations=migrations,
                app_files=app_files,
                purge_data=settings.purge_data,
                db_password=db_password,
                **common,
            ),
        )
        frontend = platform.Frontend(
            "frontend",
            platform.FrontendArgs(
                account_dir=account.account_dir,
                tenant_name=tenant_name,
                domain=domain,
                backend_url=backend.backend_url,
                schema_version=backend.schema_version,
                template=template,
                **common,
            ),
            pulumi.ResourceOptions(depends_on=[backend]),
        )
        n_migrations = str(len(migrations))
        health_checks = pulumi.Output.all(frontend.site_dir, backend.database_path, backend.backend_url).apply(
            lambda v: (
                [
                    {"name": "site", "kind": "file_contains", "path": f"{v[0]}/index.html", "text": settings.release},
                    {
                        "name": "database",
                        "kind": "sqlite_query",
                        "path": v[1],
                        "query": "SELECT COUNT(*) FROM schema_migrations",
                        "expect": n_migrations,
                    },
                    {
                        "name": "backend",
                        "kind": "file_contains",
                        "path": f"{v[2].removeprefix('file://')}/app.json",
                        "text": settings.release,
                    },
                ]
                + (
                    [
                        {
                            "name": "smoke",
                            "kind": "file_contains",
                            "path": f"{v[0]}/index.html",
                            "text": settings.smoke_text,
                        }
                    ]
                    if settings.smoke_text
                    else []
                )
            )
        )

    deployment.components.update({"account": account, "backend": backend, "frontend": frontend})
    deployment.outputs.update(
        {
            "tenant": t.tenant_id,
            "environment": t.environment,
            "platform": settings.platform,
            "app_version": settings.app_version,
            "release": settings.release,
            "account_id": account.account_id,
            "account_dir": account.account_dir,
            "git_urls": git_urls,
            "backend_url": backend.backend_url,
            "database_path": backend.database_path,
            "schema_version": backend.schema_version,
            "site_dir": frontend.site_dir,
            "frontend_url": frontend.frontend_url,
            "health_checks": health_checks,
        }
    )


__all__ = ["main", "parse_stack", "stack_reference", "account_id_for", "Settings", "Target"]
