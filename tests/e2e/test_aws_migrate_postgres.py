"""The aws platform's migrate handler (components/aws/handlers/migrate.py)
run against the real PostgreSQL server of tests/pg.py, through a thin shim in
place of the RDS Data API (tests/unit/data_api_shim.py) and moto's Secrets
Manager (#21.2, #21.6, #21.7). The handler file is loaded the way Lambda
loads it: as a module from its own folder, with the PostgreSQL migration set
of stacks/migrations/postgresql packaged next to it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import uuid
from pathlib import Path

import boto3
import psycopg
import pytest
from moto import mock_aws

from tests.unit.data_api_shim import DataApiShim

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
HANDLER = ROOT / "components" / "aws" / "handlers" / "migrate.py"
PG_SET = ROOT / "stacks" / "migrations" / "postgresql"


def load_handler(folder: Path):
    """The handler module as Lambda would load it from its package ``folder``."""
    shutil.copy(HANDLER, folder / "migrate.py")
    spec = importlib.util.spec_from_file_location(f"migrate_{uuid.uuid4().hex}", folder / "migrate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def db(postgres_server):
    name = postgres_server.create_database(f"tenant_{uuid.uuid4().hex[:12]}")
    url = postgres_server.url(name)
    shims: list[DataApiShim] = []

    def shim(**kw) -> DataApiShim:
        s = DataApiShim(url, **kw)
        shims.append(s)
        return s

    yield name, url, shim
    for s in shims:
        s.close()
    postgres_server.drop_database(name)


@pytest.fixture
def secrets():
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="eu-west-1")
        arn = client.create_secret(Name="backend-app-db")["ARN"]
        yield client, arn


def package(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    """A Lambda package folder: migrate.py + migrations/ (the PostgreSQL set by default)."""
    folder = tmp_path / "pkg"
    (folder / "migrations").mkdir(parents=True)
    if files is None:
        files = {p.name: p.read_text(encoding="utf-8") for p in sorted(PG_SET.glob("*.sql"))}
    for name, sql in files.items():
        (folder / "migrations" / name).write_text(sql, encoding="utf-8")
    return folder


def event(name: str, app_secret_arn: str = "") -> dict:
    ev = {"database": name, "cluster_arn": "arn:aws:rds:eu-west-1:1:cluster:c", "secret_arn": "arn:master"}
    if app_secret_arn:
        ev["app_secret_arn"] = app_secret_arn
    return ev


def test_postgres_set_applies_once_with_app_user_dml_only(tmp_path, db, secrets):
    name, url, shim = db
    client, arn = secrets
    mod = load_handler(package(tmp_path))
    result = mod.handler(event(name, arn), None, rds=shim(), secrets=client, sleep=lambda _s: None)
    assert result == {"applied": ["001_create_accounts", "002_create_orders"], "app_user": "created"}
    # Identity keys auto-increment on PostgreSQL (INTEGER PRIMARY KEY would not).
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [
            conn.execute("INSERT INTO accounts(email) VALUES (%s) RETURNING id", (e,)).fetchone()[0]
            for e in ("a@x", "b@x")
        ]
        assert ids == [1, 2]
        rows = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == ["001_create_accounts", "002_create_orders"]
    assert rows[0][1] == __import__("hashlib").sha256((PG_SET / "001_create_accounts.sql").read_bytes()).hexdigest()
    creds = json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
    assert creds["username"] == "app" and len(creds["password"]) >= 32
    # Second run: nothing applied, the app user kept (its password unchanged).
    again = mod.handler(event(name, arn), None, rds=shim(), secrets=client, sleep=lambda _s: None)
    assert again == {"applied": [], "app_user": "kept"}
    assert json.loads(client.get_secret_value(SecretId=arn)["SecretString"]) == creds
    # The app user has DML on the tables and no DDL, and cannot touch schema_migrations.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET ROLE app")
        conn.execute("INSERT INTO orders(account_id, total_cents) VALUES (1, 5)")
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 1
        conn.execute("DELETE FROM orders")
        for ddl in (
            "CREATE TABLE evil(x int)",
            "DROP TABLE orders",
            "ALTER TABLE accounts ADD COLUMN y int",
            "SELECT * FROM schema_migrations",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(ddl)


def test_splitter_keeps_dollar_quotes_strings_and_comments(tmp_path, db, secrets):
    name, url, shim = db
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE notes (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body TEXT NOT NULL);
    /* block; /* nested; */ still comment; */
    INSERT INTO notes(body) VALUES ('semi;colon ''quoted;'' here');
    INSERT INTO notes(body) VALUES (E'back\\\\slash\\'; still');
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        NEW.body := NEW.body || ';';  -- inside the function
        RETURN NEW;
    END;
    $body$;
    CREATE TRIGGER notes_touch BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION touch();
    INSERT INTO notes(body) VALUES ($$dollar; quoted$$);
    """
    mod = load_handler(package(tmp_path, {"001_notes.sql": sql}))
    assert mod.handler(event(name), None, rds=shim(), secrets=None, sleep=lambda _s: None)["applied"] == ["001_notes"]
    with psycopg.connect(url) as conn:
        bodies = [r[0] for r in conn.execute("SELECT body FROM notes ORDER BY id")]
    assert bodies == ["semi;colon 'quoted;' here", "back\\slash'; still", "dollar; quoted;"]


def test_changed_applied_migration_is_an_error(tmp_path, db):
    name, _url, shim = db
    folder = package(tmp_path, {"001_a.sql": "CREATE TABLE a(x int);"})
    load_handler(folder).handler(event(name), None, rds=shim(), sleep=lambda _s: None, secrets=None)
    (folder / "migrations" / "001_a.sql").write_text("CREATE TABLE a(x bigint);", encoding="utf-8")
    (folder / "migrations" / "002_b.sql").write_text("CREATE TABLE b(x int);", encoding="utf-8")
    mod = load_handler(folder)
    with pytest.raises(mod.MigrationError, match="001_a changed since they were applied"):
        mod.handler(event(name), None, rds=shim(), secrets=None, sleep=lambda _s: None)


def test_failed_migration_rolls_back_and_is_not_recorded(tmp_path, db):
    name, url, shim = db
    folder = package(
        tmp_path, {"001_a.sql": "CREATE TABLE a(x int);", "002_bad.sql": "CREATE TABLE b(x int); SELEC 1;"}
    )
    mod = load_handler(folder)
    with pytest.raises(mod.MigrationError, match="migration 002_bad failed"):
        mod.handler(event(name), None, rds=shim(), secrets=None, sleep=lambda _s: None)
    with psycopg.connect(url) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == ["001_a"]
        assert conn.execute("SELECT to_regclass('public.b')").fetchone()[0] is None


def test_paused_database_is_retried_with_backoff(tmp_path, db):
    """A paused cluster answers DatabaseResumingException until it is back."""
    name, url, shim = db
    delays: list[float] = []
    mod = load_handler(package(tmp_path))
    rds = shim(resuming=6)
    result = mod.handler(event(name), None, rds=rds, secrets=None, sleep=delays.append)
    assert result["applied"] == ["001_create_accounts", "002_create_orders"]
    assert delays == [1, 2, 4, 8, 16, 30]


def test_resuming_forever_gives_up(tmp_path, db):
    name, _url, shim = db
    mod = load_handler(package(tmp_path))
    delays: list[float] = []
    with pytest.raises(Exception, match="DatabaseResumingException"):
        mod.handler(event(name), None, rds=shim(resuming=10_000), secrets=None, sleep=delays.append)
    assert len(delays) == mod.ATTEMPTS - 1 and max(delays) == mod.MAX_DELAY


def test_empty_set_is_a_no_op(tmp_path):
    """No migrations packaged (no folder at all): no database call."""
    folder = tmp_path / "pkg"
    folder.mkdir()
    mod = load_handler(folder)

    class NoCalls:
        def __getattr__(self, item):
            raise AssertionError(f"database called: {item}")

    assert mod.handler(event("app"), None, rds=NoCalls(), secrets=NoCalls()) == {"applied": [], "app_user": "unchanged"}


def test_shim_runs_one_statement_per_call_like_the_data_api(db):
    """So a handler that sent a whole file in one call would fail here too."""
    _name, _url, shim = db
    rds = shim()
    common = {"resourceArn": "arn:c", "secretArn": "arn:s", "database": "x"}
    assert rds.execute_statement(
        sql="SELECT '50%' AS x, :v::int AS y", parameters=[{"name": "v", "value": {"longValue": 7}}], **common
    )["records"] == [[{"stringValue": "50%"}, {"longValue": 7}]]
    with pytest.raises(Exception, match="BadRequestException"):
        rds.execute_statement(sql="CREATE TABLE m(x int); CREATE TABLE n(x int)", **common)
