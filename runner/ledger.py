"""The ledger: the record of every operation on every target.

Pulumi state is the truth about resources; the ledger is the truth about what
was deployed when, which release, and with which result.  It is a small
relational database reached through SQLAlchemy Core:

* SQLite by default (``sqlite:///<project>/.runner/ledger.db``), in WAL mode
  with a busy timeout so that several threads and processes on one machine
  can write to it;
* PostgreSQL when shared (``postgresql://`` or ``postgres://`` URLs), so that
  several runner processes on several machines (``--shard I/N``) write to one
  ledger concurrently.

The ledger's own schema is versioned (table ``ledger_schema``): the ordered
list :data:`MIGRATIONS` is applied at open, each migration once and in its own
transaction, serialised between processes by ``pg_advisory_xact_lock``
(PostgreSQL) or ``BEGIN IMMEDIATE`` (SQLite).  A database written by a newer
runner (a schema version this code does not know) is refused with
:class:`LedgerSchemaError`.

Timestamps are timezone-aware UTC datetimes stored as fixed-width ISO-8601
text, so they sort and compare the same way on both databases.  "Newest" always
means the highest row id (insertion order: one sequence on PostgreSQL, immune to
clock skew between machines).

The ledger stores what it is given: masking or encrypting secrets in
``argv``, ``options`` and ``config_snapshot`` is the caller's job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event, func, inspect, or_, select, text, update
from sqlalchemy.engine import Connection, Engine, create_engine, make_url
from sqlalchemy.pool import StaticPool

from runner.ledger_schema import (
    MIGRATIONS,
    PG_MIGRATION_LOCK_KEY,
    SCHEMA_VERSION,
    ledger_schema,
    operations,
    run_parts,
    runs,
)
from runner.ledger_schema import operations as _operations_table  # for methods whose parameter is named "operations"
from runner.names import DATABASE_SCHEMES, RELEASE_OPERATIONS, iso, utc
from runner.names import now as utcnow
from runner.recovery import start_time

__all__ = [
    "Ledger",
    "LedgerError",
    "OperationRecord",
    "LedgerSchemaError",
    "OperationRow",
    "RunRow",
    "RunPart",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "OPERATION_STATUSES",
    "RUN_STATUSES",
    "FAILED_STATUSES",
    "default_ledger_url",
    "normalize_url",
    "utcnow",
]

OPERATION_STATUSES = frozenset(
    {
        "succeeded",
        "failed",
        "skipped",
        "not-started",
        "locked",
        "blocked",
        "in-sync",
        "drifted",
        "pending",
        "drifted+pending",
        "error",
        "running",
    }
)
RUN_STATUSES = frozenset({"running", "finished", "interrupted"})
#: Final statuses that make a target worth re-running (see failed_targets).
FAILED_STATUSES = frozenset({"failed", "not-started", "locked", "error"})


class LedgerError(RuntimeError):
    """A ledger operation failed (bad URL, unknown operation id, ...)."""


class LedgerSchemaError(LedgerError):
    """The ledger's schema is newer than this runner knows, or is damaged."""


# --------------------------------------------------------------------------
# time and JSON helpers


def _ts(value: datetime | None) -> str | None:
    """Fixed-width ISO-8601 UTC text; naive datetimes are taken as UTC."""
    if value is not None and not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    return iso(value, timespec="microseconds")


def _parse_ts(value: str | None) -> datetime | None:
    return None if value is None else utc(datetime.fromisoformat(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _ts(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


#: Options whose whole value is a credential (a Slack or webhook URL *is* the secret).
SECRET_OPTIONS = ("--notify",)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)[^@/\s]+(@)")
_SECRET_PARAM = re.compile(
    r"(?i)\b((?:[a-z0-9_-]*(?:token|secret|password|passwd|pwd|passphrase|api[_-]?key|access[_-]?key|sig|signature"
    r"|credentials?|auth))=)[^&\s]+"
)
REDACTED = "***"


def redact_argv(argv: Iterable[str]) -> list[str]:
    """``argv`` as it may be stored: the values of ``--notify`` (kind kept),
    passwords inside URLs (``--backend``/``--ledger``/``--registry``) and any
    ``token=``/``password=``/``secret=``-like parameter replaced by ``***``."""
    out: list[str] = []
    secret_next = False
    for arg in argv:
        arg = str(arg)
        if secret_next:
            kind, sep, _ = arg.partition(":")
            arg, secret_next = (f"{kind}:{REDACTED}" if sep else REDACTED), False
        elif arg in SECRET_OPTIONS:
            secret_next = True
        elif arg.startswith(tuple(f"{o}=" for o in SECRET_OPTIONS)):
            option, _, value = arg.partition("=")
            kind, sep, _ = value.partition(":")
            arg = f"{option}={kind}:{REDACTED}" if sep else f"{option}={REDACTED}"
        arg = _URL_PASSWORD.sub(rf"\1{REDACTED}\2", arg)
        arg = _SECRET_PARAM.sub(rf"\1{REDACTED}", arg)
        out.append(arg)
    return out


def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, default=_json_default)


def _loads(value: str | None) -> Any:
    if value is None or value == "":
        return None
    return json.loads(value)


# --------------------------------------------------------------------------
# URLs


def default_ledger_url(project_dir: str | os.PathLike[str]) -> str:
    """``sqlite:///<project>/.runner/ledger.db`` (absolute path)."""
    path = Path(project_dir).resolve() / ".runner" / "ledger.db"
    return f"sqlite:///{path}"


def normalize_url(url: str | os.PathLike[str]) -> str:
    """Map user-facing URLs onto SQLAlchemy ones.

    ``postgres://`` and ``postgresql://`` use the psycopg 3 driver; a bare file
    path means a SQLite database at that path.
    """
    if isinstance(url, os.PathLike):
        return f"sqlite:///{Path(url).resolve()}"
    url = str(url).strip()
    if not url:
        raise LedgerError("empty ledger URL")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return f"sqlite:///{Path(url).resolve()}"
    if scheme.startswith("postgresql+") and scheme not in DATABASE_SCHEMES:
        raise LedgerError(f"unsupported PostgreSQL driver in ledger URL {scheme!r}: use postgresql:// (psycopg 3)")
    if scheme not in DATABASE_SCHEMES:
        raise LedgerError(
            f"unsupported ledger URL scheme {scheme!r}: use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
        )
    return f"{DATABASE_SCHEMES[scheme]}://{rest}"


# --------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class OperationRecord:
    """What a caller records about one operation on one target: one field per
    column of ``operations`` it writes (the ledger adds id, host and pid).

    Adding a column: a field here, the column and a migration in
    :mod:`runner.ledger_schema`; nothing else lists the columns.
    """

    run_id: str
    tenant: str | None
    environment: str | None
    stack: str
    operation: str
    status: str = "running"
    release: str | None = None
    program_commit: str | None = None
    config_fingerprint: str | None = None
    config_snapshot: Any = None
    changes: Mapping[str, int] | None = None
    error: str | None = None
    error_resource: str | None = None
    error_component: str | None = None
    details: Mapping[str, Any] | None = None
    started: datetime | None = None
    ended: datetime | None = None


#: Fields stored as JSON text, and as ISO-8601 UTC text.
_JSON_FIELDS = frozenset({"config_snapshot", "changes", "details"})
_TIME_FIELDS = frozenset({"started", "ended"})
#: Fields record_end may set: the outcome (the identity of the operation is fixed at its start).
_OUTCOME_FIELDS = frozenset(f.name for f in dataclasses.fields(OperationRecord)) - {
    "run_id",
    "tenant",
    "environment",
    "stack",
    "operation",
    "status",
}


def _encode(name: str, value: Any) -> Any:
    if name in _TIME_FIELDS:
        return _ts(value)
    if name in _JSON_FIELDS:
        return _dumps(dict(value) if isinstance(value, Mapping) else value)
    return value


def _decode(name: str, value: Any) -> Any:
    if name in _TIME_FIELDS:
        return _parse_ts(value)
    if name in _JSON_FIELDS:
        return _loads(value)
    return value


@dataclass(frozen=True, kw_only=True)
class OperationRow(OperationRecord):
    """One operation on one target, as recorded."""

    id: int
    started: datetime
    details: dict[str, Any]
    host: str | None = None
    pid: int | None = None

    @property
    def duration(self) -> float | None:
        """Seconds between start and end, or None while running."""
        if self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        data = {"id": self.id, **dataclasses.asdict(self)}
        data["started"] = _ts(self.started)
        data["ended"] = _ts(self.ended)
        data["duration"] = self.duration
        return data

    @classmethod
    def _from_mapping(cls, m: Mapping[str, Any]) -> OperationRow:
        values = {f.name: _decode(f.name, m[f.name]) for f in dataclasses.fields(cls)}
        return cls(**{**values, "id": int(m["id"]), "details": values["details"] or {}})


@dataclass(frozen=True)
class RunPart:
    """One process's share of a run (one shard, or the whole unsharded run)."""

    part: str  # "I/N", or "" when unsharded
    host: str | None
    pid: int | None
    started: datetime
    ended: datetime | None
    status: str
    counts: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["started"] = _ts(self.started)
        data["ended"] = _ts(self.ended)
        return data


@dataclass(frozen=True)
class RunRow:
    """A run of one command; shards of one pipeline share it.

    ``host``, ``pid``, ``shard``, ``argv``, ``options`` are the first starter's;
    ``status``, ``ended`` and ``counts`` aggregate all parts (``counts`` is the
    sum of the parts' numeric counts).
    """

    run_id: str
    command: str
    started: datetime
    ended: datetime | None
    argv: list[str] | None
    host: str | None
    pid: int | None
    release: str | None
    shard: str | None
    status: str
    counts: dict[str, Any]
    options: dict[str, Any]
    parts: tuple[RunPart, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["started"] = _ts(self.started)
        data["ended"] = _ts(self.ended)
        data["parts"] = [p.to_dict() for p in self.parts]
        return data


# --------------------------------------------------------------------------
# the ledger


def _pid_alive(pid: int) -> bool:
    return start_time(pid) is not None


def _sum_counts(parts: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for counts in parts:
        for key, value in (counts or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            else:
                total.setdefault(key, value)
    return total


class Ledger:
    """The ledger database.  Thread-safe; safe for many processes at once.

    >>> with Ledger.open("sqlite:///tmp/ledger.db") as ledger:   # doctest: +SKIP
    ...     ledger.start_run("r1", "up", argv=["up", "--all-tenants"])
    """

    def __init__(self, url: str | os.PathLike[str], *, echo: bool = False) -> None:
        self._raw_url = str(url)
        sa_url = make_url(normalize_url(url))
        self._dialect = sa_url.get_backend_name()
        self._memory = False
        self._lock: threading.RLock | None = None
        if self._dialect == "sqlite":
            database = sa_url.database or ""
            self._memory = database in ("", ":memory:") or database.startswith("file::memory:")
            if not self._memory:
                _private_sqlite_file(Path(database).expanduser())
            kwargs: dict[str, Any] = {
                "connect_args": {"check_same_thread": False, "timeout": 60.0},
            }
            if self._memory:
                # One shared connection (a second one would be another database),
                # serialised by a lock.
                kwargs["poolclass"] = StaticPool
                self._lock = threading.RLock()
            self._engine: Engine = create_engine(sa_url, echo=echo, **kwargs)
            event.listen(self._engine, "connect", _sqlite_on_connect)
            event.listen(self._engine, "begin", _sqlite_on_begin)
        elif self._dialect == "postgresql":
            self._engine = create_engine(sa_url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=10)
        else:  # pragma: no cover - normalize_url refuses other schemes
            raise LedgerError(f"unsupported ledger database {self._dialect!r}")
        self.url = sa_url.render_as_string(hide_password=True)
        self._pid = os.getpid()
        self._host = socket.gethostname()
        self._run_parts: dict[str, str] = {}  # run_id -> part started by this object
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self._engine.dispose()
            raise

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def open(cls, url: str | os.PathLike[str], **kwargs: Any) -> Ledger:
        return cls(url, **kwargs)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self.url!r})"

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._dialect

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[Connection]:
        if self._closed:
            raise LedgerError("the ledger is closed")
        if os.getpid() != self._pid:
            # Forked child: never share the parent's pooled connections.
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        if self._lock is not None:
            with self._lock:
                with self._connect(write) as conn:
                    yield conn
        else:
            with self._connect(write) as conn:
                yield conn

    @contextmanager
    def _connect(self, write: bool) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            if self._dialect == "sqlite":
                conn.execution_options(runner_begin="BEGIN IMMEDIATE" if write else "BEGIN")
            with conn.begin():
                yield conn

    # -- schema ------------------------------------------------------------

    def _schema_version(self, conn: Connection) -> int:
        if not inspect(conn).has_table("ledger_schema"):
            return 0
        return int(conn.execute(select(func.max(ledger_schema.c.version))).scalar() or 0)

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise LedgerSchemaError(
                f"the ledger at {self.url} has schema version {version}, but this runner "
                f"only knows versions up to {SCHEMA_VERSION}: it was written by a newer "
                "runner; upgrade runner (never downgrade a shared ledger)"
            )

    def _migrate(self) -> None:
        with self._tx() as conn:
            version = self._schema_version(conn)
        self._check_version(version)
        while version < SCHEMA_VERSION:
            with self._tx(write=True) as conn:
                if self._dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY})
                ledger_schema.create(conn, checkfirst=True)
                version = self._schema_version(conn)
                self._check_version(version)
                if version >= SCHEMA_VERSION:
                    break
                MIGRATIONS[version](conn)
                version += 1
                conn.execute(ledger_schema.insert().values(version=version, applied=_ts(utcnow())))

    def schema_version(self) -> int:
        with self._tx() as conn:
            return self._schema_version(conn)

    # -- runs --------------------------------------------------------------

    def _insert(self, table: Table):  # dialect-specific INSERT with ON CONFLICT
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def start_run(
        self,
        run_id: str,
        command: str,
        *,
        argv: Iterable[str] | None = None,
        release: str | None = None,
        shard: str | None = None,
        options: Mapping[str, Any] | None = None,
        started: datetime | None = None,
    ) -> None:
        """Record the start of a run (or of this process's shard of it).

        Idempotent per run id: shards of one CI pipeline share a run id; the
        first start wins for the run's own fields, each shard gets a part.
        """
        if not run_id:
            raise ValueError("run_id must not be empty")
        now = _ts(started or utcnow())
        part = shard or ""
        pid = os.getpid()
        with self._tx(write=True) as conn:
            conn.execute(
                self._insert(runs)
                .values(
                    run_id=run_id,
                    command=command,
                    started=now,
                    argv=_dumps(redact_argv(argv) if argv is not None else None),  # credentials never stored
                    host=self._host,
                    pid=pid,
                    release=release,
                    shard=shard,
                    status="running",
                    counts=_dumps({}),
                    options=_dumps(dict(options or {})),
                )
                .on_conflict_do_nothing(index_elements=["run_id"])
            )
            stmt = self._insert(run_parts).values(
                run_id=run_id,
                part=part,
                host=self._host,
                pid=pid,
                started=now,
                status="running",
                counts=_dumps({}),
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["run_id", "part"],
                    set_={
                        "host": stmt.excluded.host,
                        "pid": stmt.excluded.pid,
                        "status": "running",
                        "ended": None,
                    },
                )
            )
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.status != "running")
                .values(status="running", ended=None)
            )
        self._run_parts[run_id] = part

    def finish_run(
        self,
        run_id: str,
        status: str = "finished",
        counts: Mapping[str, Any] | None = None,
        *,
        shard: str | None = None,
        ended: datetime | None = None,
    ) -> None:
        """Record the end of this process's part of a run.

        ``shard`` defaults to the one this Ledger object passed to start_run.
        The run's own status is ``running`` while any part runs,
        ``interrupted`` if any part was, else ``finished``; its counts are the
        sum of the parts' counts.
        """
        if status not in RUN_STATUSES - {"running"}:
            raise ValueError(f"invalid run status {status!r}: expected finished or interrupted")
        part = shard if shard is not None else self._run_parts.get(run_id, "")
        now = _ts(ended or utcnow())
        with self._tx(write=True) as conn:
            # Lock the run row first so that concurrent finishers of one run
            # aggregate one after the other (SQLite: BEGIN IMMEDIATE already).
            row = conn.execute(select(runs.c.run_id).where(runs.c.run_id == run_id).with_for_update()).first()
            if row is None:
                raise LedgerError(f"unknown run {run_id!r}: start_run was never called")
            result = conn.execute(
                update(run_parts)
                .where(run_parts.c.run_id == run_id, run_parts.c.part == part)
                .values(status=status, ended=now, counts=_dumps(dict(counts or {})))
            )
            if result.rowcount == 0:
                conn.execute(
                    run_parts.insert().values(
                        run_id=run_id,
                        part=part,
                        host=self._host,
                        pid=os.getpid(),
                        started=now,
                        ended=now,
                        status=status,
                        counts=_dumps(dict(counts or {})),
                    )
                )
            self._aggregate_run(conn, run_id)

    def _aggregate_run(self, conn: Connection, run_id: str) -> None:
        parts = conn.execute(
            select(run_parts.c.status, run_parts.c.ended, run_parts.c.counts).where(run_parts.c.run_id == run_id)
        ).all()
        statuses = {p.status for p in parts}
        if "running" in statuses:
            status, ended = "running", None
        else:
            status = "interrupted" if "interrupted" in statuses else "finished"
            ended = max((p.ended for p in parts if p.ended), default=None)
        conn.execute(
            update(runs)
            .where(runs.c.run_id == run_id)
            .values(status=status, ended=ended, counts=_dumps(_sum_counts(_loads(p.counts) for p in parts)))
        )

    def run(self, run_id: str) -> RunRow | None:
        with self._tx() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
            if row is None:
                return None
            parts = (
                conn.execute(select(run_parts).where(run_parts.c.run_id == run_id).order_by(run_parts.c.part))
                .mappings()
                .all()
            )
        return RunRow(
            run_id=row["run_id"],
            command=row["command"],
            started=_parse_ts(row["started"]),  # type: ignore[arg-type]
            ended=_parse_ts(row["ended"]),
            argv=_loads(row["argv"]),
            host=row["host"],
            pid=row["pid"],
            release=row["release"],
            shard=row["shard"],
            status=row["status"],
            counts=_loads(row["counts"]) or {},
            options=_loads(row["options"]) or {},
            parts=tuple(
                RunPart(
                    part=p["part"],
                    host=p["host"],
                    pid=p["pid"],
                    started=_parse_ts(p["started"]),  # type: ignore[arg-type]
                    ended=_parse_ts(p["ended"]),
                    status=p["status"],
                    counts=_loads(p["counts"]) or {},
                )
                for p in parts
            ),
        )

    def last_run_id(self, command: str | None = None) -> str | None:
        """The most recently started run (of ``command``, if given)."""
        stmt = select(runs.c.run_id).order_by(runs.c.started.desc(), runs.c.run_id.desc()).limit(1)
        if command is not None:
            stmt = stmt.where(runs.c.command == command)
        with self._tx() as conn:
            return conn.execute(stmt).scalar()

    # -- operations --------------------------------------------------------

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in OPERATION_STATUSES:
            raise ValueError(
                f"invalid operation status {status!r}: expected one of " + ", ".join(sorted(OPERATION_STATUSES))
            )

    def insert(self, record: OperationRecord) -> int:
        """Insert one operation row; return its id.  ``started`` defaults to
        now, and a row with a final status ends when it started unless told."""
        self._check_status(record.status)
        if not record.stack:
            raise ValueError("stack must not be empty")
        if not record.operation:
            raise ValueError("operation must not be empty")
        started = record.started or utcnow()
        ended = record.ended or (None if record.status == "running" else started)
        record = dataclasses.replace(record, started=started, ended=ended, details=record.details or None)
        values = {f.name: _encode(f.name, getattr(record, f.name)) for f in dataclasses.fields(record)}
        values.update(host=self._host, pid=os.getpid())
        with self._tx(write=True) as conn:
            result = conn.execute(operations.insert().values(**values).returning(operations.c.id))
            return int(result.scalar_one())

    def record_start(
        self, run_id: str, tenant: str | None, environment: str | None, stack: str, operation: str, **fields: Any
    ) -> int:
        """Insert a ``running`` row for an operation that starts now; return its id.
        ``fields``: any other :class:`OperationRecord` field (release, details, ...)."""
        return self.insert(OperationRecord(run_id, tenant, environment, stack, operation, "running", **fields))

    def record(
        self,
        run_id: str,
        tenant: str | None,
        environment: str | None,
        stack: str,
        operation: str,
        status: str,
        **fields: Any,
    ) -> int:
        """Insert a complete row at once (skipped, blocked, not-started, ...).
        ``fields``: any other :class:`OperationRecord` field."""
        return self.insert(OperationRecord(run_id, tenant, environment, stack, operation, status, **fields))

    def record_end(self, op_id: int, status: str, **outcome: Any) -> None:
        """Close an operation row with its final ``status`` and ``outcome``
        (changes, error, error_resource, error_component, ended, ...; ``ended``
        defaults to now); ``details`` are merged into the start's."""
        self._check_status(status)
        if status == "running":
            raise ValueError("record_end needs a final status, not 'running'")
        if unknown := set(outcome) - _OUTCOME_FIELDS:
            raise TypeError(f"record_end() got unexpected fields: {', '.join(sorted(unknown))}")
        details = outcome.pop("details", None)
        outcome["ended"] = outcome.get("ended") or utcnow()
        values = {"status": status, **{name: _encode(name, value) for name, value in outcome.items()}}
        with self._tx(write=True) as conn:
            current = conn.execute(
                select(operations.c.details).where(operations.c.id == op_id).with_for_update()
            ).first()
            if current is None:
                raise LedgerError(f"unknown operation id {op_id}")
            if details:
                values["details"] = _dumps({**(_loads(current.details) or {}), **details})
            conn.execute(update(operations).where(operations.c.id == op_id).values(**values))

    # -- queries -----------------------------------------------------------

    def _rows(self, stmt) -> list[OperationRow]:
        with self._tx() as conn:
            return [OperationRow._from_mapping(m) for m in conn.execute(stmt).mappings()]

    def _one(self, stmt) -> OperationRow | None:
        rows = self._rows(stmt.limit(1))
        return rows[0] if rows else None

    def operation(self, op_id: int) -> OperationRow | None:
        return self._one(select(operations).where(operations.c.id == op_id))

    def history(self, stack: str, limit: int | None = 50) -> list[OperationRow]:
        """The stack's operations, newest first."""
        stmt = select(operations).where(operations.c.stack == stack).order_by(operations.c.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        return self._rows(stmt)

    def run_operations(self, run_id: str) -> list[OperationRow]:
        """Every row of the run (all shards), oldest first."""
        return self._rows(select(operations).where(operations.c.run_id == run_id).order_by(operations.c.id))

    def last_good_release(self, stack: str, *, before_release: str | None = None) -> OperationRow | None:
        """The newest succeeded ``up``/``rollback`` whose release differs from
        ``before_release`` (the current release): what a rollback returns to."""
        stmt = (
            select(operations)
            .where(
                operations.c.stack == stack,
                operations.c.operation.in_(RELEASE_OPERATIONS),
                operations.c.status == "succeeded",
            )
            .order_by(operations.c.id.desc())
        )
        if before_release is not None:
            stmt = stmt.where(or_(operations.c.release.is_(None), operations.c.release != before_release))
        return self._one(stmt)

    def last_success(self, stack: str, operation: str = "up") -> OperationRow | None:
        return self._one(
            select(operations)
            .where(
                operations.c.stack == stack,
                operations.c.operation == operation,
                operations.c.status == "succeeded",
            )
            .order_by(operations.c.id.desc())
        )

    def succeeded_releases(self, environment: str, release: str) -> set[str | None]:
        """Tenants (None = untenanted) with a succeeded ``up`` of ``release`` in
        ``environment``: the input of lifecycle (promotion) gates."""
        stmt = (
            select(operations.c.tenant)
            .where(
                operations.c.environment == environment,
                operations.c.release == release,
                operations.c.operation == "up",
                operations.c.status == "succeeded",
            )
            .distinct()
        )
        with self._tx() as conn:
            return {r[0] for r in conn.execute(stmt)}

    def release_reached(self, environment: str, release: str) -> bool:
        stmt = (
            select(operations.c.id)
            .where(
                operations.c.environment == environment,
                operations.c.release == release,
                operations.c.operation == "up",
                operations.c.status == "succeeded",
            )
            .limit(1)
        )
        with self._tx() as conn:
            return conn.execute(stmt).first() is not None

    def latest_by_stack(
        self,
        operations: Iterable[str] | None = ("up", "rollback", "drift", "destroy"),
        *,
        stacks: Iterable[str] | None = None,
    ) -> dict[str, OperationRow]:
        """The newest row per stack among ``operations`` (None = any), in one
        query (GROUP BY max(id) joined back) - for the fleet status grid."""
        ops = _operations_table
        inner = select(ops.c.stack, func.max(ops.c.id).label("max_id")).group_by(ops.c.stack)
        if operations is not None:
            inner = inner.where(ops.c.operation.in_(list(operations)))
        if stacks is not None:
            inner = inner.where(ops.c.stack.in_(list(stacks)))
        sub = inner.subquery()
        stmt = select(ops).join(sub, ops.c.id == sub.c.max_id).order_by(ops.c.stack)
        return {row.stack: row for row in self._rows(stmt)}

    def latest_drift(self, stack: str) -> OperationRow | None:
        return self._one(
            select(operations)
            .where(operations.c.stack == stack, operations.c.operation == "drift")
            .order_by(operations.c.id.desc())
        )

    def failed_targets(self, run_id: str) -> list[OperationRow]:
        """Per stack, the run's final row when it is failed/not-started/locked/error."""
        inner = (
            select(func.max(operations.c.id).label("max_id"))
            .where(operations.c.run_id == run_id)
            .group_by(operations.c.stack)
            .subquery()
        )
        stmt = (
            select(operations)
            .join(inner, operations.c.id == inner.c.max_id)
            .where(operations.c.status.in_(sorted(FAILED_STATUSES)))
            .order_by(operations.c.id)
        )
        return self._rows(stmt)

    def running_operations(self) -> list[OperationRow]:
        return self._rows(select(operations).where(operations.c.status == "running").order_by(operations.c.id))

    # -- recovery ----------------------------------------------------------

    def mark_interrupted_runs(
        self,
        host: str | None = None,
        alive_pid_check: Callable[[int], bool] | None = None,
    ) -> list[str]:
        """Close what dead processes on ``host`` left open.

        Run parts still ``running`` whose pid is dead become ``interrupted``;
        operations still ``running`` whose pid is dead become ``failed`` with
        error ``"interrupted"``.  Returns the affected run ids.  Only this
        host's pids can be checked: rows of other machines are never touched.
        """
        host = host or self._host
        alive = alive_pid_check or _pid_alive
        now = _ts(utcnow())
        affected: set[str] = set()
        with self._tx(write=True) as conn:
            parts = conn.execute(
                select(run_parts.c.run_id, run_parts.c.part, run_parts.c.pid).where(
                    run_parts.c.host == host, run_parts.c.status == "running"
                )
            ).all()
            ops = conn.execute(
                select(operations.c.id, operations.c.run_id, operations.c.pid).where(
                    operations.c.host == host, operations.c.status == "running"
                )
            ).all()
            dead: dict[int, bool] = {}

            def is_dead(pid: int | None) -> bool:
                if pid is None:
                    return False
                if pid not in dead:
                    dead[pid] = not alive(pid)
                return dead[pid]

            for p in parts:
                if is_dead(p.pid):
                    conn.execute(
                        update(run_parts)
                        .where(run_parts.c.run_id == p.run_id, run_parts.c.part == p.part)
                        .values(status="interrupted", ended=now)
                    )
                    affected.add(p.run_id)
            for o in ops:
                if is_dead(o.pid):
                    conn.execute(
                        update(operations)
                        .where(operations.c.id == o.id, operations.c.status == "running")
                        .values(status="failed", ended=now, error="interrupted")
                    )
                    affected.add(o.run_id)
            for run_id in sorted(affected):
                self._aggregate_run(conn, run_id)
        return sorted(affected)


# --------------------------------------------------------------------------
# SQLite connection setup


def _private_sqlite_file(path: Path) -> None:
    """The ledger file (run argv, config snapshots, errors) is readable by its
    owner only: created 0600 (a new folder for it 0700), an existing one
    tightened. SQLite gives its -wal/-shm files the database file's mode."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError:  # SQLite reports it, in its own words
            return
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if candidate.stat().st_mode & 0o077:
                candidate.chmod(0o600)
        except OSError:  # absent, or not ours to change
            pass


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own
    # transaction handling does not cover DDL and cannot BEGIN IMMEDIATE).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout = 60000")
        # WAL is persistent in the file: only the first opener switches.  The
        # switch can fail with "database is locked" WITHOUT waiting on the busy
        # handler when another process opens the fresh file at the same moment
        # (seen in the two-process fresh-open test): retry with backoff.
        deadline = time.monotonic() + 60.0
        delay = 0.005
        while True:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() in ("wal", "memory"):
                break
            try:
                cursor.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get("runner_begin", "BEGIN"))
