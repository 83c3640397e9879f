"""Runs the backend's PostgreSQL migrations inside the tenant account through
the Aurora Data API, and keeps the app's database user (DML only) in place.

Event: {"database": name, "cluster_arn": ..., "secret_arn": <master secret>,
"app_secret_arn": <secret the app user's credentials are written to>}.

The SQL files are packaged next to this file under ``migrations/`` (the
PostgreSQL set). Each is applied once, in name order, in its own transaction
(holding an advisory lock, so two runs never apply the same file), split into
statements by :func:`split_statements` (quotes, dollar quotes and comments
respected), and recorded in ``schema_migrations`` with its sha256: a file
changed after it was applied is an error, never silently skipped. No files:
nothing to do, and the database is not even woken up.

Aurora Serverless v2 with ``min_capacity`` 0 pauses when idle; the first call
then fails with ``DatabaseResumingException`` until it is back. Every call is
retried on that (and on throttling) with exponential backoff; such a call was
not executed, so retrying it is safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as _secrets
import time

#: Error codes of the Data API that mean "not executed, try again later".
RETRYABLE = frozenset({"DatabaseResumingException", "DatabaseUnavailableException", "ThrottlingException"})
#: Backoff: 1, 2, 4, ... seconds, at most 30 s between attempts, 20 attempts
#: (about 7 minutes; a paused cluster resumes in well under a minute).
ATTEMPTS = 20
MAX_DELAY = 30.0
LOCK_ID = 2021_0421  # pg_advisory_xact_lock key of the migrations
APP_USER = "app"

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


class MigrationError(RuntimeError):
    pass


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


def retrying(call, *, sleep=time.sleep, attempts: int = ATTEMPTS):
    """``call()``, retried while the database resumes (exponential backoff)."""
    delay = 1.0
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - only RETRYABLE codes are retried
            if error_code(exc) not in RETRYABLE or attempt == attempts:
                raise
            sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
    raise AssertionError("unreachable")


def split_statements(sql: str) -> list[str]:
    """The statements of ``sql``, split on top-level ``;`` only: not inside
    '...' (with '' and E'\\'' escapes), "...", $tag$...$tag$, -- comments or
    (nested) /* */ comments. Empty statements and comment-only ones are dropped."""
    out: list[str] = []
    start = 0
    i = 0
    n = len(sql)
    has_code = False
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "/" and sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                raise MigrationError("unterminated /* comment")
            continue
        if c in ("'", '"'):
            escapes = (
                c == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            )
            j = i + 1
            while True:
                if j >= n:
                    raise MigrationError(f"unterminated {c} quote")
                if escapes and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            has_code = True
            continue
        if c == "$":
            k = i + 1
            while k < n and (sql[k].isalnum() or sql[k] == "_"):
                k += 1
            tag_ok = k < n and sql[k] == "$" and not sql[i + 1 : k][:1].isdigit()
            preceded = i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")
            if tag_ok and not preceded:
                tag = sql[i : k + 1]
                end = sql.find(tag, k + 1)
                if end < 0:
                    raise MigrationError(f"unterminated dollar quote {tag}")
                i = end + len(tag)
                has_code = True
                continue
        if c == ";":
            if has_code:
                out.append(sql[start:i].strip())
            start, has_code = i + 1, False
            i += 1
            continue
        if not c.isspace():
            has_code = True
        i += 1
    if has_code:
        out.append(sql[start:].strip())
    return out


def load_migrations(folder: str = FOLDER) -> list[tuple[str, str, str]]:
    """(version, sql, sha256) of every ``*.sql`` file in name order; none when
    the folder is missing (an empty migration set is packaged as no folder)."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".sql"):
            continue
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            sql = fh.read()
        found.append((name[:-4], sql, hashlib.sha256(sql.encode("utf-8")).hexdigest()))
    return found


def _text(value: str) -> dict:
    return {"stringValue": value}


class Database:
    """The Data API calls the migrations need, each retried while resuming."""

    def __init__(self, rds, event: dict, sleep=time.sleep):
        self.rds = rds
        self.sleep = sleep
        self.common = {"resourceArn": event["cluster_arn"], "secretArn": event["secret_arn"]}
        self.database = event["database"]

    def _call(self, method: str, **kwargs):
        return retrying(lambda: getattr(self.rds, method)(**self.common, **kwargs), sleep=self.sleep)

    def execute(self, sql: str, tx: str | None = None, **params: str) -> list[list]:
        kwargs: dict = {"sql": sql, "database": self.database}
        if params:
            kwargs["parameters"] = [{"name": k, "value": _text(v)} for k, v in params.items()]
        if tx:
            kwargs["transactionId"] = tx
        return self._call("execute_statement", **kwargs).get("records") or []

    def begin(self) -> str:
        return self._call("begin_transaction", database=self.database)["transactionId"]

    def commit(self, tx: str) -> None:
        self._call("commit_transaction", transactionId=tx)

    def rollback(self, tx: str) -> None:
        self._call("rollback_transaction", transactionId=tx)


def applied_checksums(db: Database, tx: str | None = None) -> dict[str, str]:
    rows = db.execute("SELECT version, checksum FROM schema_migrations", tx)
    return {r[0]["stringValue"]: r[1]["stringValue"] for r in rows}


def ensure_app_user(db: Database, secrets, secret_arn: str) -> str:
    """The app's database user: DML on the public schema's tables and
    sequences, nothing else (no DDL, not the master user). Its password is
    generated here and written to ``secret_arn`` only, so it never leaves the
    tenant account. Returns "created" or "kept"."""
    try:
        json.loads(secrets.get_secret_value(SecretId=secret_arn)["SecretString"])
        has_secret = True
    except Exception as exc:  # noqa: BLE001
        if error_code(exc) != "ResourceNotFoundException":
            raise
        has_secret = False
    exists = bool(db.execute("SELECT 1 FROM pg_roles WHERE rolname = :name", name=APP_USER))
    state = "kept"
    if not (has_secret and exists):
        password = _secrets.token_urlsafe(32)  # [A-Za-z0-9_-]: safe inside '...'
        verb = "ALTER" if exists else "CREATE"
        db.execute(f"{verb} ROLE {APP_USER} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}'")
        secrets.put_secret_value(
            SecretId=secret_arn,
            SecretString=json.dumps({"username": APP_USER, "password": password, "engine": "postgres"}),
        )
        state = "created"
    for statement in (
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA public TO {APP_USER}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_USER}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_USER}",
        "DO $$ BEGIN IF to_regclass('public.schema_migrations') IS NOT NULL THEN "
        f"REVOKE ALL ON schema_migrations FROM {APP_USER}; END IF; END $$",
    ):
        db.execute(statement)
    return state


def migrate(db: Database, migrations: list[tuple[str, str, str]]) -> list[str]:
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations("
        "version TEXT PRIMARY KEY, checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    done = applied_checksums(db)
    _check_unchanged(migrations, done)
    applied = []
    for version, sql, checksum in migrations:
        if version in done:
            continue
        statements = split_statements(sql)
        tx = db.begin()
        try:
            db.execute(f"SELECT pg_advisory_xact_lock({LOCK_ID})", tx)
            if version in applied_checksums(db, tx):  # another run got there first
                db.rollback(tx)
                continue
            for statement in statements:
                db.execute(statement, tx)
            db.execute("INSERT INTO schema_migrations(version, checksum) VALUES (:v, :c)", tx, v=version, c=checksum)
            db.commit(tx)
        except Exception as exc:
            try:
                db.rollback(tx)
            except Exception:  # noqa: BLE001 - the original error matters
                pass
            raise MigrationError(f"migration {version} failed: {exc}") from None
        applied.append(version)
    return applied


def _check_unchanged(migrations, done: dict[str, str]) -> None:
    changed = [v for v, _, checksum in migrations if v in done and done[v] != checksum]
    if changed:
        raise MigrationError(
            f"applied migration(s) {', '.join(changed)} changed since they were applied "
            "(checksum differs): add a new migration instead of editing an applied one"
        )


def handler(event, _context, rds=None, secrets=None, sleep=time.sleep, folder: str = FOLDER):
    migrations = load_migrations(folder)
    if not migrations and not event.get("app_secret_arn"):
        return {"applied": [], "app_user": "unchanged"}
    if rds is None or (secrets is None and event.get("app_secret_arn")):
        import boto3  # provided by the Lambda runtime

        rds = rds or boto3.client("rds-data")
        secrets = secrets or boto3.client("secretsmanager")
    db = Database(rds, event, sleep=sleep)
    applied = migrate(db, migrations) if migrations else []
    app_user = ensure_app_user(db, secrets, event["app_secret_arn"]) if event.get("app_secret_arn") else "unchanged"
    return {"applied": applied, "app_user": app_user}
