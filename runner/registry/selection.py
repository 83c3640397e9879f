"""Target selection: which (tenant, environment) stacks a command acts on.

Selector values come from the command line and are hostile until checked:
tenant ids are matched against :data:`TENANT_ID_PATTERN` before anything else
and are only ever compared with registry ids, never used to build a path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ._text import did_you_mean, plural, show
from .errors import SecretError, SelectionError
from .models import ID_RULE, Registry, SecretRef, Tenant, is_valid_id, unknown_environment_message
from .paths import PathPolicy

__all__ = [
    "Selection",
    "Target",
    "registry_summary",
    "resolve_secrets",
    "select_targets",
    "tenants_table",
]

DISABLED = "tenant disabled"


@dataclass(frozen=True)
class Target:
    """One stack to act on. ``tenant`` is None for an untenanted deployment."""

    tenant: str | None
    environment: str
    stack: str
    config: Mapping[str, Any]
    secrets: Mapping[str, SecretRef]
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Selection:
    """Selected targets in registry order (tenants as listed, environments in
    promotion order) and the targets skipped with the reason (disabled
    tenants are reported, never silently dropped)."""

    targets: list[Target]
    skipped: list[tuple[Target, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)


def target_for(registry: Registry, tenant: Tenant, environment: str) -> Target:
    """The target of ``tenant`` in ``environment``: registry defaults merged
    with the tenant's config, plus ``tenant_name``; keys given as secrets are
    left out of ``config``."""
    config = {**registry.defaults, **tenant.config, "tenant_name": tenant.name}
    for key in tenant.secrets:
        config.pop(key, None)
    return Target(
        tenant=tenant.id,
        environment=environment,
        stack=f"{tenant.id}.{environment}",
        config=MappingProxyType(config),
        secrets=MappingProxyType(dict(tenant.secrets)),
        tags=MappingProxyType(dict(tenant.tags)),
    )


def _check_ids(values: Iterable[Any], what: str) -> list[str]:
    ids = list(values)
    for value in ids:
        if not is_valid_id(value):
            raise SelectionError(f"invalid {what} {show(value)}: use {ID_RULE}")
    return ids


def _parse_tags(tags: Iterable[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for item in tags:
        key, sep, value = item.partition("=") if isinstance(item, str) else ("", "", "")
        if not sep or not key or not value:
            raise SelectionError(f"invalid tag selector {show(item)}: use key=value")
        if wanted.get(key, value) != value:
            raise SelectionError(f"tag {key!r} selected with two values ({wanted[key]!r}, {value!r})")
        wanted[key] = value
    return wanted


def _unknown_tenants(registry: Registry, ids: list[str]) -> None:
    known = {t.id for t in registry.tenants}
    unknown = [i for i in dict.fromkeys(ids) if i not in known]
    if unknown:
        raise SelectionError("; ".join(f"unknown tenant {i!r}{did_you_mean(i, known)}" for i in unknown))


def _tagged_tenants_exist(registry: Registry, wanted: dict[str, str]) -> None:
    """A tag selector alone must match a tenant of the registry (enabled or
    not): a typo would otherwise select nothing and succeed."""
    if any(all(t.tags.get(k) == v for k, v in wanted.items()) for t in registry.tenants):
        return
    known = sorted({f"{k}={v}" for t in registry.tenants for k, v in t.tags.items()})
    wanted_text = ", ".join(f"{k}={v}" for k, v in wanted.items())
    raise SelectionError(
        f"no tenant has the tag{'s' if len(wanted) > 1 else ''} {wanted_text}"
        + (f" (known: {', '.join(known)})" if known else "")
    )


def select_targets(
    registry: Registry,
    *,
    tenants: Iterable[str] = (),
    all_tenants: bool = False,
    envs: Iterable[str] = (),
    tags: Iterable[str] = (),
    exclude: Iterable[str] = (),
    untenanted: bool = False,
    default_all_tenants: bool = False,
) -> Selection:
    """Select targets; :class:`SelectionError` for anything a user must fix.

    ``tenants`` and ``all_tenants`` are exclusive; ``tags`` are ``key=value``
    and must all match; ``exclude`` removes tenants; ``envs`` restricts
    environments. A tenant named with ``tenants`` that is connected to none of
    ``envs`` is an error (the user asked for something that does not exist).
    ``untenanted`` deploys the environment itself (stack = environment name,
    config = defaults); it needs exactly one ``envs`` and is refused where the
    environment requires a tenant.

    Without ``tenants`` and ``all_tenants``, ``tags`` alone select the
    tenants carrying them (a tag no tenant has is an error); with neither,
    ``default_all_tenants`` (commands that are safe on the whole fleet, such
    as ``recover``) selects every tenant, otherwise the selection is an error.
    """
    tenant_ids = _check_ids(tenants, "tenant id")
    excluded = set(_check_ids(exclude, "tenant id"))
    env_names = _check_ids(envs, "environment name")
    wanted_tags = _parse_tags(tags)
    known_envs = registry.environment_names
    for env in env_names:
        if env not in known_envs:
            raise SelectionError(unknown_environment_message(env, known_envs))
    env_set = set(env_names) or set(known_envs)

    if untenanted:
        if tenant_ids or all_tenants or excluded or wanted_tags:
            raise SelectionError("an untenanted deployment takes no tenant selectors (--tenant, --all-tenants, --tag)")
        if len(set(env_names)) != 1:
            raise SelectionError("an untenanted deployment needs exactly one --env")
        environment = registry.environment(env_names[0])
        if environment.require_tenant:
            raise SelectionError(f"environment {environment.name!r} requires a tenant")
        missing = [
            key
            for key, spec in registry.config_schema.items()
            if spec.required and key not in registry.defaults and key not in ("release", "tenant_name")
        ]
        platform_key = registry.config_schema.get("platform")
        platform = registry.defaults.get("platform", platform_key.default if platform_key else None)
        if (
            platform == "aws"
            and "account_email_domain" in registry.config_schema
            and not registry.defaults.get("account_email_domain")
        ):
            missing.append("account_email_domain (required on the aws platform)")
        if missing:
            raise SelectionError(
                f"an untenanted deployment takes its config from defaults, which lack {', '.join(missing)}"
            )
        target = Target(
            tenant=None,
            environment=environment.name,
            stack=environment.name,
            config=MappingProxyType(dict(registry.defaults)),
            secrets=MappingProxyType({}),
            tags=MappingProxyType({}),
        )
        return Selection(targets=[target], skipped=[])

    if tenant_ids and all_tenants:
        raise SelectionError("use either --tenant T or --all-tenants, not both")
    if not tenant_ids and not all_tenants:
        if wanted_tags:
            _tagged_tenants_exist(registry, wanted_tags)
        elif not default_all_tenants:
            raise SelectionError("select tenants with --tenant T or --all-tenants (or --tag KEY=VALUE)")
    _unknown_tenants(registry, [*tenant_ids, *excluded])

    named = set(tenant_ids)
    if named and env_names:
        for tenant_id in dict.fromkeys(tenant_ids):
            tenant = registry.tenant(tenant_id)
            if not env_set.intersection(tenant.environments):
                raise SelectionError(
                    f"tenant {tenant_id!r} is not deployed to {', '.join(env_names)} "
                    f"(its environments: {', '.join(tenant.environments)})"
                )

    targets: list[Target] = []
    skipped: list[tuple[Target, str]] = []
    for tenant in registry.tenants:
        if named and tenant.id not in named:
            continue
        if tenant.id in excluded:
            continue
        if any(tenant.tags.get(k) != v for k, v in wanted_tags.items()):
            continue
        for environment in known_envs:  # promotion order
            if environment in env_set and environment in tenant.environments:
                target = target_for(registry, tenant, environment)
                if tenant.enabled:
                    targets.append(target)
                else:
                    skipped.append((target, DISABLED))
    return Selection(targets=targets, skipped=skipped)


def resolve_secrets(target: Target, base_dir: str | Path) -> dict[str, str]:
    """Read the target's secrets: ``{config key: value}``.

    ``{env: VAR}`` reads the environment variable (unset or empty is an
    error); ``{file: PATH}`` reads the file, relative to ``base_dir`` (the
    registry's directory, :attr:`Registry.base_dir`), without its trailing
    newline. Raises :class:`SecretError` naming tenant, key and reference,
    never the value.
    """
    values: dict[str, str] = {}
    for key, ref in target.secrets.items():
        if ref.env is not None:
            value = os.environ.get(ref.env)
            if value is None:
                raise SecretError(target.tenant, key, f"environment variable {ref.env} is not set")
            if value == "":
                raise SecretError(target.tenant, key, f"environment variable {ref.env} is empty")
        else:
            path = Path(ref.file).expanduser()
            if not path.is_absolute():
                path = Path(base_dir) / path
            _, refused = PathPolicy.from_env().secret_file(ref.file, Path(base_dir))
            if refused:  # checked at load time too; again here, right before reading
                raise SecretError(target.tenant, key, refused)
            try:
                value = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise SecretError(target.tenant, key, f"file {path} not found") from None
            except IsADirectoryError:
                raise SecretError(target.tenant, key, f"file {path} is a directory") from None
            except PermissionError:
                raise SecretError(target.tenant, key, f"file {path}: permission denied") from None
            except UnicodeDecodeError:
                raise SecretError(target.tenant, key, f"file {path} is not UTF-8 text") from None
            except OSError as exc:
                raise SecretError(target.tenant, key, f"file {path}: {exc.strerror or 'cannot read'}") from None
            value = value.rstrip("\r\n")
            if value == "":
                raise SecretError(target.tenant, key, f"file {path} is empty")
        values[key] = value
    return values


def registry_summary(registry: Registry) -> str:
    """``OK stacks/tenants.yaml: 4 tenants (4 enabled), 3 environments, 6 targets``
    (targets of enabled tenants)."""
    enabled = [t for t in registry.tenants if t.enabled]
    targets = sum(len(t.environments) for t in enabled)
    return (
        f"OK {registry.source}: {plural(len(registry.tenants), 'tenant')} ({len(enabled)} enabled), "
        f"{plural(len(registry.environments), 'environment')}, {plural(targets, 'target')}"
    )


def tenants_table(registry: Registry) -> list[dict[str, Any]]:
    """Rows for ``runner tenants list``: id, name, environments, tags, enabled."""
    return [
        {
            "id": t.id,
            "name": t.name,
            "environments": list(t.environments),
            "tags": dict(t.tags),
            "enabled": t.enabled,
        }
        for t in registry.tenants
    ]
