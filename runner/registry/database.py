"""Registries kept in a database table (thousands of tenants, edited by other
tools): ``sqlite:///path.db?table=tenants`` or
``postgresql://user@host:port/db?table=tenants&base=stacks/base.yaml``.

One row per tenant. Columns: ``id TEXT, name TEXT, environments TEXT (JSON
list), tags TEXT (JSON object), config TEXT (JSON object), secrets TEXT (JSON
object), enabled BOOLEAN/INTEGER``; JSON/JSONB columns work as well. Only
``id`` and ``environments`` must exist; other columns of the table (bookkeeping
such as ``updated_at``) are ignored, unlike unknown keys in YAML, because a
table is shared with the tools that maintain it.

Defaults, environments and rollout come from the YAML file given as
``base=PATH``; without it, the environments are testing, staging and
production (production requires a tenant) and there are no defaults.

Rows are read in pages of :data:`PAGE_SIZE` with keyset pagination on ``id``
(never OFFSET), so the registry order is id order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import (
    Boolean,
    Column,
    MetaData,
    Table,
    Text,
    create_engine,
    func,
    select,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchTableError, SQLAlchemyError

from runner.names import DATABASE_SCHEMES

from ._text import show
from .errors import RegistryError
from .loader import read_yaml_file, validate_document, yaml_locator
from .models import Registry, is_valid_id
from .schema import ConfigKey

__all__ = ["PAGE_SIZE", "DEFAULT_BASE", "load_database_registry", "write_registry_table"]

PAGE_SIZE = 500

DEFAULT_BASE: dict[str, Any] = {
    "defaults": {},
    "environments": [
        {"name": "testing"},
        {"name": "staging"},
        {"name": "production", "require_tenant": True},
    ],
}

JSON_COLUMNS = ("environments", "tags", "config", "secrets")
COLUMNS = ("id", "name", *JSON_COLUMNS, "enabled")
REQUIRED_COLUMNS = ("id", "environments")

_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class _Target:
    """A parsed registry URL: SQLAlchemy URL, table, base file, display form."""

    def __init__(self, url: str) -> None:
        head, _, query = url.partition("?")
        scheme_name, _, rest_of_url = head.partition("://")
        scheme = DATABASE_SCHEMES.get(scheme_name)
        self.table = "tenants"
        self.base: str | None = None
        params = []
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "table":
                self.table = value
            elif key == "base":
                self.base = value
            else:
                params.append((key, value))
        if scheme is None:
            raise RegistryError(
                [
                    f"{scheme_name}://...: unsupported registry URL "
                    "(use a YAML path, sqlite:///PATH or postgresql://USER@HOST/DB)"
                ]
            )
        # Rebuilt by hand: urlunsplit would turn sqlite:///x into sqlite:/x.
        self.url = f"{scheme}://{rest_of_url}" + (f"?{urlencode(params)}" if params else "")
        try:  # as the user wrote it, without table/base and the password
            make_url(self.url)
            shown = f"{scheme_name}://{rest_of_url}" + (f"?{urlencode(params)}" if params else "")
            self.display = make_url(shown).render_as_string(hide_password=True)
        except ArgumentError:
            raise RegistryError([f"invalid registry URL {show(url)}"]) from None
        if not _TABLE_RE.fullmatch(self.table):
            raise RegistryError([f"{self.display}: invalid table name {show(self.table)}"])
        # sqlite:///relative.db, sqlite:////absolute.db, sqlite:// (memory)
        self.sqlite_path = rest_of_url[1:] if scheme == "sqlite" else None


def load_database_registry(url: str, schema: Mapping[str, ConfigKey]) -> Registry:
    target = _Target(url)
    if target.sqlite_path is not None and target.sqlite_path not in ("", ":memory:"):
        if not Path(target.sqlite_path).is_file():
            # SQLAlchemy would silently create an empty database here.
            raise RegistryError([f"{target.display}: database file not found"])
    if target.base is not None:
        base_doc = read_yaml_file(Path(target.base), target.base)
        base = base_doc.data
        if not isinstance(base, dict):
            raise RegistryError(
                [
                    f"{target.base}:{base_doc.line}: the base registry must be a mapping "
                    "with the keys defaults, environments (and rollout)"
                ]
            )
        if "tenants" in base:
            raise RegistryError(
                [
                    f"{target.base}:{base_doc.line_of(('tenants',))}: tenants: a base file of a database "
                    f"registry cannot list tenants (they come from table {target.table!r})"
                ]
            )
        base_locate = yaml_locator(target.base, base_doc)
        base_dir = Path(target.base).resolve().parent
    else:
        base = DEFAULT_BASE
        base_locate = None
        base_dir = Path.cwd()

    rows, problems = _read_rows(target)
    tenants: list[dict[str, Any]] = []
    labels: list[str] = []
    failed: set[tuple[int, str]] = set()
    extra: list[tuple[tuple[Any, ...], str]] = []
    for index, row in enumerate(rows):
        raw, label, bad = _row_to_tenant(row)
        tenants.append(raw)
        labels.append(label)
        for column, message in bad:
            failed.add((index, column))
            extra.append((("tenants", index, column), message))
    extra.extend(problems)

    def locate(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], str, tuple[Any, ...]]:
        if len(loc) >= 2 and loc[0] == "tenants" and isinstance(loc[1], int) and loc[1] < len(labels):
            return (1, loc[1]), f"{target.table} row {labels[loc[1]]}", loc[2:]
        if loc[:1] == ("tenants",):
            return (1, -1), target.table, loc[1:]
        if base_locate is not None:
            key, prefix, path = base_locate(loc)
            return (0, *key), prefix, path
        return (0,), "built-in base", loc

    def skip(loc: tuple[Any, ...]) -> bool:
        return len(loc) >= 3 and loc[0] == "tenants" and (loc[1], loc[2]) in failed

    document = {**base, "tenants": tenants}
    registry = validate_document(document, schema, locate, skip=skip, extra=extra, base_dir=base_dir)
    return registry.with_origin(target.display, base_dir)


def _label(tenant_id: Any) -> str:
    return tenant_id if is_valid_id(tenant_id) else show(tenant_id)


def _row_to_tenant(row: Mapping[str, Any]) -> tuple[dict[str, Any], str, list[tuple[str, str]]]:
    raw: dict[str, Any] = {"id": row["id"]}
    bad: list[tuple[str, str]] = []
    if row.get("name") is not None:
        raw["name"] = row["name"]
    for column in JSON_COLUMNS:
        value = row.get(column)
        if value is None:
            continue
        if isinstance(value, (bytes, bytearray)):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                message = getattr(exc, "msg", "invalid JSON")
                bad.append((column, f"invalid JSON ({message})"))
                continue
        raw[column] = value
    enabled = row.get("enabled")
    if enabled is not None:
        raw["enabled"] = bool(enabled) if isinstance(enabled, int) and enabled in (0, 1) else enabled
    return raw, _label(row["id"]), bad


def _read_rows(target: _Target) -> tuple[list[dict[str, Any]], list[tuple[tuple[Any, ...], str]]]:
    try:
        engine = create_engine(target.url)
    except (ArgumentError, ImportError) as exc:
        raise RegistryError([f"{target.display}: cannot open the database: {exc}"]) from None
    try:
        with engine.connect() as conn:
            return _read_table(conn, target)
    except NoSuchTableError:
        raise RegistryError([f"{target.display}: table {target.table!r} not found"]) from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise RegistryError([f"{target.display}: cannot read table {target.table!r}: {reason}"]) from None
    finally:
        engine.dispose()


def _read_table(conn: Connection, target: _Target) -> tuple[list[dict[str, Any]], list[tuple[tuple[Any, ...], str]]]:
    table = Table(target.table, MetaData(), autoload_with=conn)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.c]
    if missing:
        raise RegistryError(
            [
                f"{target.display}: table {target.table!r} has no column "
                + ", ".join(repr(c) for c in missing)
                + f" (expected columns: {', '.join(COLUMNS)})"
            ]
        )
    columns = [table.c[c] for c in COLUMNS if c in table.c]
    problems: list[tuple[tuple[Any, ...], str]] = []
    null_ids = conn.execute(select(func.count()).select_from(table).where(table.c.id.is_(None))).scalar_one()
    if null_ids:
        problems.append((("tenants",), f"{null_ids} row(s) without an id"))
    duplicates = dict(
        conn.execute(select(table.c.id, func.count()).group_by(table.c.id).having(func.count() > 1)).all()
    )

    rows: list[dict[str, Any]] = []
    last: Any = None
    while True:
        query = select(*columns).where(table.c.id.is_not(None)).order_by(table.c.id).limit(PAGE_SIZE)
        if last is not None:
            query = query.where(table.c.id > last)
        page = conn.execute(query).mappings().all()
        for row in page:
            # Keyset pagination returns each id once per page at most, and a
            # duplicate split across pages not at all: duplicates are reported
            # from the GROUP BY above and only the first row is used.
            if rows and rows[-1]["id"] == row["id"]:
                continue
            rows.append(dict(row))
        if len(page) < PAGE_SIZE:
            break
        last = page[-1]["id"]
    index = {row["id"]: i for i, row in enumerate(rows)}
    for tenant_id, count in duplicates.items():
        if tenant_id is not None and tenant_id in index:
            problems.append(
                (("tenants", index[tenant_id], "id"), f"duplicate tenant id {_label(tenant_id)!r} ({count} rows)")
            )
    return rows, problems


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value  # a str is stored as is: tests can store broken JSON
    return json.dumps(value, sort_keys=False)


def write_registry_table(url: str, tenants: list[dict[str, Any]]) -> None:
    """Create the registry table if missing and insert ``tenants`` (dicts with
    the registry's tenant keys). For tests and benchmarks."""
    target = _Target(url)
    metadata = MetaData()
    table = Table(
        target.table,
        metadata,
        Column("id", Text, primary_key=True),
        Column("name", Text),
        Column("environments", Text),
        Column("tags", Text),
        Column("config", Text),
        Column("secrets", Text),
        Column("enabled", Boolean, nullable=False, default=True),
    )
    rows = [
        {
            "id": tenant["id"],
            "name": tenant.get("name"),
            **{column: _json_text(tenant.get(column)) for column in JSON_COLUMNS},
            "enabled": tenant.get("enabled", True),
        }
        for tenant in tenants
    ]
    engine = create_engine(target.url)
    try:
        metadata.create_all(engine, checkfirst=True)
        with engine.begin() as conn:
            for start in range(0, len(rows), 1000):
                conn.execute(table.insert(), rows[start : start + 1000])
    finally:
        engine.dispose()
