"""The ledger's tables and the migrations of its own schema.

:mod:`runner.ledger` runs the queries; this module only says what the tables
look like now (the module-level :class:`~sqlalchemy.Table` objects) and how a
database gets there (:data:`MIGRATIONS`, applied in order at open, each once).

Adding a column to ``operations``: add it to the table below, append a
migration (``ALTER TABLE operations ADD COLUMN ...``), and add the field to
:class:`runner.ledger.OperationRecord`.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, PrimaryKeyConstraint, Table, Text
from sqlalchemy.engine import Connection

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "PG_MIGRATION_LOCK_KEY",
    "metadata",
    "ledger_schema",
    "runs",
    "run_parts",
    "operations",
]

# Arbitrary constant key for the migration advisory lock ("runner-ledger").
PG_MIGRATION_LOCK_KEY = 0x72756E6C6564

# --------------------------------------------------------------------------
# schema: the current shape, used by the queries below


metadata = MetaData()

ledger_schema = Table(
    "ledger_schema",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied", Text),
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("command", Text, nullable=False),
    Column("started", Text, nullable=False),
    Column("ended", Text),
    Column("argv", Text),
    Column("host", Text),
    Column("pid", Integer),
    Column("release", Text),
    Column("shard", Text),
    Column("status", Text, nullable=False),
    Column("counts", Text),
    Column("options", Text),
)

# One row per process taking part in a run: shards of one CI pipeline share a
# run id, each shard has its own part; the runs row aggregates them.
run_parts = Table(
    "run_parts",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("part", Text, nullable=False),  # the shard "I/N", or "" when unsharded
    Column("host", Text),
    Column("pid", Integer),
    Column("started", Text, nullable=False),
    Column("ended", Text),
    Column("status", Text, nullable=False),
    Column("counts", Text),
    PrimaryKeyConstraint("run_id", "part"),
)

_ID_TYPE = BigInteger().with_variant(Integer, "sqlite")

operations = Table(
    "operations",
    metadata,
    Column("id", _ID_TYPE, primary_key=True, autoincrement=True),
    Column("run_id", Text, nullable=False),
    Column("tenant", Text),
    Column("environment", Text),
    Column("stack", Text, nullable=False),
    Column("operation", Text, nullable=False),
    Column("release", Text),
    Column("program_commit", Text),
    Column("config_fingerprint", Text),
    Column("config_snapshot", Text),
    Column("status", Text, nullable=False),
    Column("started", Text, nullable=False),
    Column("ended", Text),
    Column("changes", Text),
    Column("error", Text),
    Column("error_resource", Text),
    Column("error_component", Text),
    Column("details", Text),
    Column("host", Text),
    Column("pid", Integer),
)
Index("ix_operations_stack_started", operations.c.stack, operations.c.started)
Index("ix_operations_stack_id", operations.c.stack, operations.c.id)
Index("ix_operations_run_id", operations.c.run_id)
Index("ix_operations_env_release", operations.c.environment, operations.c.release)


# --------------------------------------------------------------------------
# migrations of the ledger's own schema
#
# Each entry takes an open Connection inside a transaction.  Never edit an
# entry once released: append a new one.  Migration 1 is deliberately a frozen
# copy of the initial tables (not the module-level ones, which follow the
# newest schema).


def _m0001_initial(conn: Connection) -> None:
    md = MetaData()
    Table(
        "runs",
        md,
        Column("run_id", Text, primary_key=True),
        Column("command", Text, nullable=False),
        Column("started", Text, nullable=False),
        Column("ended", Text),
        Column("argv", Text),
        Column("host", Text),
        Column("pid", Integer),
        Column("release", Text),
        Column("shard", Text),
        Column("status", Text, nullable=False),
        Column("counts", Text),
        Column("options", Text),
    )
    Table(
        "run_parts",
        md,
        Column("run_id", Text, nullable=False),
        Column("part", Text, nullable=False),
        Column("host", Text),
        Column("pid", Integer),
        Column("started", Text, nullable=False),
        Column("ended", Text),
        Column("status", Text, nullable=False),
        Column("counts", Text),
        PrimaryKeyConstraint("run_id", "part"),
    )
    ops = Table(
        "operations",
        md,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("run_id", Text, nullable=False),
        Column("tenant", Text),
        Column("environment", Text),
        Column("stack", Text, nullable=False),
        Column("operation", Text, nullable=False),
        Column("release", Text),
        Column("program_commit", Text),
        Column("config_fingerprint", Text),
        Column("config_snapshot", Text),
        Column("status", Text, nullable=False),
        Column("started", Text, nullable=False),
        Column("ended", Text),
        Column("changes", Text),
        Column("error", Text),
        Column("error_resource", Text),
        Column("error_component", Text),
        Column("details", Text),
        Column("host", Text),
        Column("pid", Integer),
    )
    Index("ix_operations_stack_started", ops.c.stack, ops.c.started)
    Index("ix_operations_run_id", ops.c.run_id)
    md.create_all(conn)


def _m0002_query_indexes(conn: Connection) -> None:
    # latest_by_stack/history (newest = highest id per stack) and the
    # lifecycle gates (succeeded_releases by environment and release).
    conn.exec_driver_sql("CREATE INDEX ix_operations_stack_id ON operations (stack, id)")
    conn.exec_driver_sql("CREATE INDEX ix_operations_env_release ON operations (environment, release)")


MIGRATIONS: list[Callable[[Connection], None]] = [
    _m0001_initial,
    _m0002_query_indexes,
]
SCHEMA_VERSION = len(MIGRATIONS)
