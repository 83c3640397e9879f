"""The ledger against a real PostgreSQL server (tests/pg.py starts it).

The same scenarios as the SQLite tests (tests/unit/test_ledger.py), each in a
fresh database, plus several processes writing to one run id and racing to
migrate a fresh database.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from runner.ledger import SCHEMA_VERSION, Ledger
from tests.unit.test_ledger import (
    SCENARIOS,
    scenario_concurrent_fresh_open,
    scenario_concurrent_shards_one_run,
    scenario_threads,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(postgres_server) -> str:
    name = postgres_server.create_database(f"ledger_{uuid.uuid4().hex[:16]}")
    return postgres_server.url(name)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("scenario_"))
def test_scenario(scenario, pg_url):
    scenario(pg_url)


def test_three_processes_write_one_run(pg_url):
    scenario_concurrent_shards_one_run(pg_url, shards=3, stacks=40)


def test_processes_migrate_fresh_db_at_once(postgres_server):
    for _ in range(3):
        url = postgres_server.url(postgres_server.create_database(f"fresh_{uuid.uuid4().hex[:16]}"))
        scenario_concurrent_fresh_open(url, processes=4)


def test_threads_share_one_ledger(pg_url):
    scenario_threads(pg_url)


def test_postgres_specifics(pg_url):
    assert pg_url.startswith("postgresql://")
    with Ledger(pg_url.replace("postgresql://", "postgres://", 1)) as lg:
        assert lg.dialect == "postgresql"
        assert lg.schema_version() == SCHEMA_VERSION
        with lg.engine.connect() as conn:
            indexes = set(
                conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'operations'")).scalars()
            )
            id_type = conn.execute(
                text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'operations' AND column_name = 'id'"
                )
            ).scalar()
        assert {"ix_operations_stack_started", "ix_operations_run_id", "ix_operations_stack_id"} <= indexes
        assert id_type == "bigint"
