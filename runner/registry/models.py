"""Registry models: the trust boundary between operators' YAML and the runner.

Every model is frozen and forbids unknown keys: the registry is written by
people, and a misspelt key (``enviroments``) must be an error, not a silently
ignored setting. Identifiers are checked against their pattern exactly as
written (no lower-casing first, pydantic#8577). Checks that need the whole
document (duplicate ids, unknown environments, config keys against the
program's declaration) run in one model validator on :class:`Registry`, over
the raw document as well, so that they are reported together with the field
errors instead of only after those are fixed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ._text import did_you_mean, show, type_name
from .errors import SelectionError
from .paths import LABEL_KEYS, PATH_KEYS, PathPolicy, label_problem
from .schema import (
    RESERVED_KEYS,
    ConfigKey,
    check_config_value,
    default_schema,
    unknown_key_message,
)

__all__ = [
    "ENV_VAR_PATTERN",
    "Environment",
    "Registry",
    "Rollout",
    "SecretRef",
    "TENANT_ID_PATTERN",
    "Tenant",
    "Wave",
    "is_valid_id",
]

#: Tenant ids and environment names. No dots, slashes, leading dash or upper
#: case: an id becomes part of a stack name, a path and a command line.
TENANT_ID_PATTERN = r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$"
# re's "$" also matches before a trailing newline; fullmatch does not.
_ID_RE = re.compile(TENANT_ID_PATTERN[1:-1])
ID_RULE = "3-40 characters a-z, 0-9 and '-', starting with a letter, not ending with '-'"

ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
_ENV_VAR_RE = re.compile(ENV_VAR_PATTERN[1:-1])

_PERCENT_RE = re.compile(r"([0-9]+)%")

SECRET_PLAINTEXT = "secrets must be references {env: VAR} or {file: PATH}, never values"


def is_valid_id(value: object) -> bool:
    """True when ``value`` is a string that matches :data:`TENANT_ID_PATTERN`."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def fail(message: str, **context: Any) -> PydanticCustomError:
    """A validation error whose message is exactly ``message``."""
    return PydanticCustomError("registry", "{message}", {"message": message, **context})


def _id_validator(kind: str):
    def validate(value: Any) -> str:
        if not isinstance(value, str):
            raise fail(f"{kind} must be a string, got {type_name(value)}")
        if _ID_RE.fullmatch(value) is None:
            raise fail(f"invalid {kind} {show(value)}: use {ID_RULE}")
        return value

    return validate


TenantId = Annotated[str, PlainValidator(_id_validator("tenant id"))]
EnvironmentName = Annotated[str, PlainValidator(_id_validator("environment name"))]
NonEmptyStr = Annotated[str, Field(min_length=1, strict=True)]
Tags = dict[NonEmptyStr, NonEmptyStr]


def _none_as_empty(data: Any, *keys: str) -> Any:
    """``tags:`` with nothing after it is YAML null; read it as empty."""
    if isinstance(data, dict):
        for key in keys:
            if key in data and data[key] is None:
                empty = {"tenants": ()}
                return {k: (empty.get(k, {}) if v is None and k in keys else v) for k, v in data.items()}
    return data


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SecretRef(_Model):
    """Where a secret comes from: ``{env: VAR}`` or ``{file: PATH}``.

    The registry holds references only; the value is read by
    :func:`runner.registry.resolve_secrets` when a target runs.
    """

    env: str | None = None
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _reference_only(cls, data: Any) -> Any:
        if not isinstance(data, (dict, SecretRef, Mapping)):
            raise fail(SECRET_PLAINTEXT)  # never echo the value
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise fail("a secret reference has exactly one key: env or file")
        return self

    @field_validator("env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and _ENV_VAR_RE.fullmatch(value) is None:
            raise fail(f"invalid environment variable name {show(value)}")
        return value

    @field_validator("file")
    @classmethod
    def _file_path(cls, value: str | None) -> str | None:
        if value is not None and (not value or "\x00" in value):
            raise fail("file must be a non-empty path")
        return value

    def describe(self) -> str:
        """``env NAME`` or ``file PATH``: safe to print, it is not the value."""
        return f"env {self.env}" if self.env is not None else f"file {self.file}"


class Environment(_Model):
    """A lifecycle phase; the registry lists them in promotion order."""

    name: EnvironmentName
    require_tenant: StrictBool = False


class Tenant(_Model):
    """A customer, deployed to each of its ``environments``."""

    id: TenantId
    name: NonEmptyStr
    environments: tuple[EnvironmentName, ...]
    tags: Tags = {}
    config: dict[str, Any] = {}
    secrets: dict[str, SecretRef] = {}
    enabled: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        data = _none_as_empty(data, "tags", "config", "secrets")
        if isinstance(data, dict) and "name" not in data and isinstance(data.get("id"), str):
            data = {**data, "name": data["id"]}
        return data

    @field_validator("environments")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise fail("a tenant needs at least one environment")
        return value


def _check_amount(value: Any, *, what: str, zero_ok: bool) -> Any:
    """An int count or an ``"N%"`` string (the form is kept as written)."""
    low = 0 if zero_ok else 1
    if isinstance(value, int) and not isinstance(value, bool):
        if value < low:
            raise fail(f"{what} must be {'>= 0' if zero_ok else '> 0'}, got {value}")
        return value
    if isinstance(value, str):
        match = _PERCENT_RE.fullmatch(value)
        if match and (zero_ok or int(match.group(1)) > 0) and int(match.group(1)) <= 100:
            return value
        bounds = "0-100" if zero_ok else "1-100"
        raise fail(f'{what} must be a count or a percentage like "10%" ({bounds}), got {show(value)}')
    raise fail(f'{what} must be a count or a percentage like "10%", got {type_name(value)}')


def _amount_of(value: int | str, total: int, *, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    share = total * int(value[:-1]) / 100
    return math.ceil(share) if round_up else math.floor(share)


class Wave(_Model):
    """One step of a progressive rollout: the tenants matching ``tags`` (all of
    them), at most ``max`` of them. A wave with neither takes the rest."""

    name: NonEmptyStr
    tags: Tags = {}
    max: Annotated[
        int | str | None, PlainValidator(lambda v: None if v is None else _check_amount(v, what="max", zero_ok=False))
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _null_tags(cls, data: Any) -> Any:
        return _none_as_empty(data, "tags")

    @property
    def takes_rest(self) -> bool:
        return not self.tags and self.max is None

    def limit(self, candidates: int) -> int:
        """How many of ``candidates`` tenants this wave may take (a percentage
        rounds up, so "25%" of 1 tenant is 1)."""
        if self.max is None:
            return candidates
        return min(candidates, _amount_of(self.max, candidates, round_up=True))


class Rollout(_Model):
    """Progressive rollout across tenants. ``failure_tolerance`` applies per
    wave: more failures than that stop the rollout before the next wave.

    A wave without ``tags`` and ``max`` takes every tenant not yet taken; it is
    allowed anywhere, but waves after it get nothing. The last wave must take
    the rest, so no tenant is left out of a rollout by accident.
    """

    waves: tuple[Wave, ...]
    failure_tolerance: Annotated[
        int | str, PlainValidator(lambda v: _check_amount(v, what="failure_tolerance", zero_ok=True))
    ] = 0

    @field_validator("waves")
    @classmethod
    def _not_empty(cls, value: tuple[Wave, ...]) -> tuple[Wave, ...]:
        if not value:
            raise fail("a rollout needs at least one wave")
        return value

    def tolerance(self, wave_size: int) -> int:
        """Failures allowed in a wave of ``wave_size`` targets (a percentage
        rounds down: "10%" of 5 is 0)."""
        return _amount_of(self.failure_tolerance, wave_size, round_up=False)


class Registry(_Model):
    """The tenant registry: defaults, environments (promotion order), tenants,
    and an optional rollout. Build it with :func:`runner.registry.load_registry`
    (which adds file positions to errors); constructing it directly validates
    the same way, against this project's Pulumi.yaml unless
    ``context={"schema": ...}`` is given to ``model_validate``.
    """

    defaults: dict[str, Any] = {}
    environments: tuple[Environment, ...]
    tenants: tuple[Tenant, ...] = ()
    rollout: Rollout | None = None

    _source: str = PrivateAttr(default="<registry>")
    _base_dir: Path = PrivateAttr(default_factory=Path)
    _schema: dict[str, ConfigKey] = PrivateAttr(default_factory=dict)
    _index: dict[str, Tenant] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _null_defaults(cls, data: Any) -> Any:
        return _none_as_empty(data, "defaults", "tenants")

    @field_validator("environments")
    @classmethod
    def _has_environments(cls, value: tuple[Environment, ...]) -> tuple[Environment, ...]:
        if not value:
            raise fail("list at least one environment")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _whole_document(cls, data: Any, handler: Any, info: ValidationInfo) -> Registry:
        if isinstance(data, Registry):
            return handler(data)
        context = info.context or {}
        schema = context.get("schema")
        if schema is None:
            schema = default_schema()
        paths = context.get("paths") or PathPolicy.from_env()
        base_dir = Path(context.get("base_dir") or Path.cwd())
        problems = cross_check(data, schema, paths, base_dir) if isinstance(data, dict) else []
        try:
            registry = handler(data)
        except ValidationError as exc:
            raise _combined(exc, problems) from None
        if problems:
            raise _combined(None, problems)
        registry._schema = dict(schema)
        return registry

    # --- lookups ---------------------------------------------------------

    @property
    def source(self) -> str:
        """Where the registry came from, as the caller named it."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """Relative ``{file: PATH}`` secrets are relative to this directory."""
        return self._base_dir

    @property
    def config_schema(self) -> dict[str, ConfigKey]:
        return dict(self._schema)

    @property
    def environment_names(self) -> tuple[str, ...]:
        return tuple(env.name for env in self.environments)

    def environment(self, name: str) -> Environment:
        for env in self.environments:
            if env.name == name:
                return env
        raise SelectionError(unknown_environment_message(name, self.environment_names))

    def tenant(self, tenant_id: str) -> Tenant:
        """The tenant ``tenant_id``; :class:`SelectionError` (with close
        matches) when it is invalid or unknown."""
        if not is_valid_id(tenant_id):
            raise SelectionError(f"invalid tenant id {show(tenant_id)}: use {ID_RULE}")
        if self._index is None:
            self._index = {t.id: t for t in self.tenants}
        try:
            return self._index[tenant_id]
        except KeyError:
            raise SelectionError(f"unknown tenant {tenant_id!r}{did_you_mean(tenant_id, self._index)}") from None

    def with_origin(self, source: str, base_dir: Path) -> Registry:
        """Record where the registry was loaded from (used by the loader)."""
        self._source = source
        self._base_dir = base_dir
        return self


def unknown_environment_message(name: str, known: tuple[str, ...] | list[str]) -> str:
    hint = did_you_mean(name, known)
    return f"unknown environment {show(name)}{hint or ''} (known: {', '.join(known)})"


# --- whole-document checks -------------------------------------------------

Problem = tuple[tuple[Any, ...], str, dict[str, Any]]


def _check_config_block(
    loc: tuple[Any, ...],
    block: Any,
    schema: Mapping[str, ConfigKey],
    problems: list[Problem],
    paths: PathPolicy | None = None,
) -> None:
    if not isinstance(block, dict):
        return
    for key, value in block.items():
        if not isinstance(key, str):
            continue  # pydantic reports non-string keys
        where = (*loc, key)
        if key in RESERVED_KEYS:
            problems.append((where, f"{key!r} is set by the runner and cannot be set in the registry", {}))
        elif key not in schema:
            problems.append((where, unknown_key_message(key, schema), {}))
        elif schema[key].secret:
            problems.append(
                (
                    where,
                    f"{key!r} is declared secret in Pulumi.yaml: give it under secrets "
                    "as {env: VAR} or {file: PATH}",
                    {},
                )
            )
        else:
            message = check_config_value(schema[key], value)
            if not message and key in LABEL_KEYS and isinstance(value, str):
                message = label_problem(value, key)  # it becomes a directory name
            if not message and key in PATH_KEYS and paths is not None:
                message = paths.path_problem(key, value)
            if message:
                problems.append((where, message, {}))


def _check_secret_keys(
    loc: tuple[Any, ...],
    secrets: Any,
    config: Any,
    schema: Mapping[str, ConfigKey],
    problems: list[Problem],
    paths: PathPolicy | None = None,
    base_dir: Path | None = None,
) -> None:
    if not isinstance(secrets, dict):
        return
    for key in secrets:
        if not isinstance(key, str):
            continue
        where = (*loc, key)
        ref = secrets[key]
        file = ref.get("file") if isinstance(ref, dict) else None
        if paths is not None and isinstance(file, str) and file and "\x00" not in file:
            _, why = paths.secret_file(file, base_dir or Path.cwd())
            if why:
                problems.append(((*where, "file"), why, {}))
        if key in RESERVED_KEYS:
            problems.append((where, f"{key!r} is set by the runner and cannot be set in the registry", {}))
        elif key not in schema:
            problems.append((where, unknown_key_message(key, schema), {}))
        elif schema[key].type != "string":
            problems.append((where, f"{key!r} is {schema[key].type}-typed; secrets can only set string keys", {}))
        elif isinstance(config, dict) and key in config:
            problems.append((where, f"{key!r} is set both in config and in secrets", {}))


#: The longest account_email_domain (AWS account emails are at most 64
#: characters; the rest is the per-tenant-and-environment local part).
EMAIL_DOMAIN_MAX = 40
_EMAIL_DOMAIN_RE = re.compile(rf"(?=.{{4,{EMAIL_DOMAIN_MAX}}}$)([a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?\.)+[a-z]{{2,63}}")


_ADOPTED_RE = re.compile(r"([a-z][a-z0-9-]{1,38}[a-z0-9])=([0-9]{12})")


def _check_platform(
    index: int,
    defaults: Any,
    config: Any,
    secrets: Any,
    schema: Mapping[str, ConfigKey],
    problems: list[Problem],
    adopted: dict[str, tuple[Any, ...]],
    envs: Any,
) -> None:
    """Rules of the aws platform that Pulumi.yaml cannot express: a member
    account's root mail needs a real domain, and db_password has no use there.
    Applies only when the schema declares the keys involved."""
    defaults = defaults if isinstance(defaults, dict) else {}
    config = config if isinstance(config, dict) else {}
    secrets = secrets if isinstance(secrets, dict) else {}
    merged = {**defaults, **config}
    platform_key = schema.get("platform")
    platform = merged.get("platform", platform_key.default if platform_key else None)
    if platform != "aws":
        return
    if "account_email_domain" in schema:
        where = (
            ("tenants", index, "config", "account_email_domain")
            if "account_email_domain" in config
            else ("defaults", "account_email_domain")
            if "account_email_domain" in defaults
            else ("tenants", index, "config")
            if config
            else ("tenants", index, "id")
        )
        domain = merged.get("account_email_domain")
        if not domain:
            problems.append(
                (
                    where,
                    "the aws platform needs account_email_domain: the mail domain of the member "
                    "accounts' root emails (aws+<tenant>-<environment>@<domain>), one whose mail you "
                    "receive",
                    {},
                )
            )
        elif isinstance(domain, str) and not _EMAIL_DOMAIN_RE.fullmatch(domain):
            problems.append(
                (
                    where,
                    f"account_email_domain {show(domain)} must be a lower-case domain name of "
                    f"at most {EMAIL_DOMAIN_MAX} characters",
                    {},
                )
            )
    ids = config.get("account_ids")
    if "account_ids" in schema and isinstance(ids, list):
        envs = [e for e in envs if isinstance(e, str)] if isinstance(envs, list | tuple) else []
        for pos, entry in enumerate(ids):
            where = ("tenants", index, "config", "account_ids", pos)
            match = _ADOPTED_RE.fullmatch(entry) if isinstance(entry, str) else None
            if not match:
                problems.append(
                    (where, f"account_ids entry {show(entry)}: expected '<environment>=<12-digit account id>'", {})
                )
                continue
            env, account = match.groups()
            if envs and env not in envs:
                problems.append((where, f"account_ids entry {entry!r}: the tenant has no environment {env!r}", {}))
            elif account in adopted:
                problems.append(
                    (
                        where,
                        f"account {account} is adopted twice: one member account per tenant and environment",
                        {"first": adopted[account]},
                    )
                )
            else:
                adopted[account] = where
    if "db_password" in schema:
        for block, loc in ((secrets, "secrets"), (config, "config")):
            if "db_password" in block:
                problems.append(
                    (
                        ("tenants", index, loc, "db_password"),
                        "db_password is not used on the aws platform: the database's master password "
                        "is managed by RDS and the app's database user gets a generated password kept "
                        "in the tenant account; remove it",
                        {},
                    )
                )


def cross_check(
    data: Mapping[str, Any],
    schema: Mapping[str, ConfigKey],
    paths: PathPolicy | None = None,
    base_dir: Path | None = None,
) -> list[Problem]:
    """Checks across the document, on the raw data (plain dicts and lists, as
    loaded from YAML or a database) so that they run even when
    some entries are malformed (those are reported by the field validators).
    Each problem is ``(loc, message, context)``; ``context["first"]`` is the
    loc of an earlier duplicate."""
    problems: list[Problem] = []

    known: list[str] | None = None
    environments = data.get("environments")
    if isinstance(environments, list | tuple):
        known = []
        first_env: dict[str, int] = {}
        for index, env in enumerate(environments):
            name = env.get("name") if isinstance(env, dict) else None
            if not is_valid_id(name):
                continue
            if name in first_env:
                problems.append(
                    (
                        ("environments", index, "name"),
                        f"duplicate environment {name!r}",
                        {"first": ("environments", first_env[name], "name")},
                    )
                )
            else:
                first_env[name] = index
                known.append(name)

    defaults = data.get("defaults")
    _check_config_block(("defaults",), defaults, schema, problems, paths)
    required = [k for k, spec in schema.items() if spec.required and k not in RESERVED_KEYS]

    tenants = data.get("tenants")
    adopted: dict[str, tuple[Any, ...]] = {}
    if isinstance(tenants, list | tuple):
        first_tenant: dict[str, int] = {}
        for index, tenant in enumerate(tenants):
            if not isinstance(tenant, dict):
                continue
            tenant_id = tenant.get("id")
            if is_valid_id(tenant_id):
                if tenant_id in first_tenant:
                    problems.append(
                        (
                            ("tenants", index, "id"),
                            f"duplicate tenant id {tenant_id!r}",
                            {"first": ("tenants", first_tenant[tenant_id], "id")},
                        )
                    )
                else:
                    first_tenant[tenant_id] = index
            envs = tenant.get("environments")
            if isinstance(envs, list | tuple):
                seen: set[str] = set()
                for pos, env in enumerate(envs):
                    if not is_valid_id(env):
                        continue
                    if known is not None and env not in known:
                        problems.append(
                            (
                                ("tenants", index, "environments", pos),
                                unknown_environment_message(env, known),
                                {},
                            )
                        )
                    elif env in seen:
                        problems.append(
                            (
                                ("tenants", index, "environments", pos),
                                f"environment {env!r} listed twice",
                                {},
                            )
                        )
                    seen.add(env)
            config = tenant.get("config")
            secrets = tenant.get("secrets")
            _check_config_block(("tenants", index, "config"), config, schema, problems, paths)
            _check_secret_keys(("tenants", index, "secrets"), secrets, config, schema, problems, paths, base_dir)
            _check_platform(index, defaults, config, secrets, schema, problems, adopted, tenant.get("environments"))
            if required:
                blocks = [b if b is not None else {} for b in (defaults, config, secrets)]
                if all(isinstance(b, dict) for b in blocks):
                    for key in required:
                        if not any(key in b for b in blocks):
                            problems.append(
                                (
                                    ("tenants", index, "config"),
                                    f"missing required config key {key!r} (set it in defaults, config or secrets)",
                                    {},
                                )
                            )

    rollout = data.get("rollout")
    waves = rollout.get("waves") if isinstance(rollout, dict) else None
    if isinstance(waves, list | tuple) and waves:
        first_wave: dict[str, int] = {}
        for index, wave in enumerate(waves):
            name = wave.get("name") if isinstance(wave, dict) else None
            if not isinstance(name, str) or not name:
                continue
            if name in first_wave:
                problems.append(
                    (
                        ("rollout", "waves", index, "name"),
                        f"duplicate wave name {name!r}",
                        {"first": ("rollout", "waves", first_wave[name], "name")},
                    )
                )
            else:
                first_wave[name] = index
        last = waves[-1]
        if isinstance(last, dict) and (last.get("tags") or last.get("max") is not None):
            problems.append(
                (
                    ("rollout", "waves", len(waves) - 1),
                    "the last wave must take the rest (no tags, no max), or tenants are left "
                    "out of the rollout: add a final wave like {name: rest}",
                    {},
                )
            )
    return problems


def _combined(exc: ValidationError | None, problems: list[Problem]) -> ValidationError:
    """One ValidationError holding pydantic's errors and the document checks."""
    details: list[InitErrorDetails] = []
    if exc is not None:
        for error in exc.errors():
            context = {**(error.get("ctx") or {}), "message": error["msg"]}
            details.append(
                InitErrorDetails(
                    type=PydanticCustomError(error["type"], "{message}", context),
                    loc=error["loc"],
                    input=error.get("input"),
                )
            )
    for loc, message, context in problems:
        details.append(InitErrorDetails(type=fail(message, **context), loc=loc, input=None))
    return ValidationError.from_exception_data("Registry", details)
