"""The ledger over SQLite (tests/e2e/test_ledger_postgres.py runs the same
scenarios against a real PostgreSQL server).

Each ``scenario_*`` function takes a database URL for an empty database; the
``SCENARIOS`` list is shared with the PostgreSQL tests.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import event, func, select

from runner import ledger as ledger_mod
from runner.ledger import (
    SCHEMA_VERSION,
    Ledger,
    LedgerError,
    LedgerSchemaError,
    OperationRow,
    RunRow,
    default_ledger_url,
    ledger_schema,
    normalize_url,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_fork = multiprocessing.get_context("fork")


def _t(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _deploy(
    lg: Ledger,
    run_id: str,
    stack: str,
    release: str,
    status: str,
    *,
    op: str = "up",
    minute: int = 0,
    tenant: str | None = "acme",
    environment: str = "staging",
) -> int:
    op_id = lg.record_start(
        run_id,
        tenant,
        environment,
        stack,
        op,
        release=release,
        program_commit=f"commit-{release}",
        config_fingerprint=f"fp-{release}",
        config_snapshot={"app_version": release},
        started=_t(minute),
    )
    lg.record_end(
        op_id,
        status,
        changes={"create": 0, "update": 1, "delete": 0, "same": 3},
        error=None if status == "succeeded" else "boom",
        ended=_t(minute) + timedelta(seconds=30),
    )
    return op_id


# ---------------------------------------------------------------------------
# scenarios shared with the PostgreSQL tests


def scenario_schema_applied_once(url: str) -> None:
    with Ledger(url) as lg:
        assert lg.schema_version() == SCHEMA_VERSION
        with lg.engine.connect() as conn:
            first = conn.execute(select(ledger_schema).order_by(ledger_schema.c.version)).all()
    assert [r.version for r in first] == list(range(1, SCHEMA_VERSION + 1))
    with Ledger.open(url) as lg:  # reopening is a no-op
        with lg.engine.connect() as conn:
            again = conn.execute(select(ledger_schema).order_by(ledger_schema.c.version)).all()
    assert again == first


def scenario_newer_schema_refused(url: str) -> None:
    with Ledger(url) as lg:
        with lg.engine.begin() as conn:
            conn.execute(ledger_schema.insert().values(version=SCHEMA_VERSION + 7, applied="x"))
    with pytest.raises(LedgerSchemaError, match=rf"schema version {SCHEMA_VERSION + 7}.*newer runner"):
        Ledger(url)


def scenario_history_newest_first(url: str) -> None:
    with Ledger(url) as lg:
        lg.start_run("r1", "up", argv=["up", "--all-tenants"], release="R1")
        ids = [_deploy(lg, "r1", "acme.staging", f"R{i}", "succeeded", minute=i) for i in range(5)]
        _deploy(lg, "r1", "other.staging", "R9", "failed", minute=9, tenant="other")
        rows = lg.history("acme.staging")
        assert [r.id for r in rows] == ids[::-1]
        assert [r.release for r in rows] == ["R4", "R3", "R2", "R1", "R0"]
        assert [r.id for r in lg.history("acme.staging", limit=2)] == ids[:-3:-1]
        assert lg.history("nobody.staging") == []
        row = rows[0]
        assert isinstance(row, OperationRow)
        assert row.status == "succeeded" and row.operation == "up"
        assert row.changes == {"create": 0, "update": 1, "delete": 0, "same": 3}
        assert row.config_snapshot == {"app_version": "R4"}
        assert row.started == _t(4) and row.started.tzinfo is not None
        assert row.duration == 30.0
        assert row.host and row.pid == os.getpid()
        as_json = json.loads(json.dumps(row.to_dict()))
        assert as_json["started"] == "2024-05-01T12:04:00.000000+00:00"
        assert as_json["changes"]["update"] == 1
        assert [r.stack for r in lg.run_operations("r1")] == ["acme.staging"] * 5 + ["other.staging"]
        assert lg.operation(ids[0]).release == "R0"


def scenario_running_then_end(url: str) -> None:
    with Ledger(url) as lg:
        lg.start_run("r1", "up")
        op_id = lg.record_start("r1", "acme", "staging", "acme.staging", "up", release="R1", details={"wave": "canary"})
        row = lg.operation(op_id)
        assert row.status == "running" and row.ended is None and row.duration is None
        assert row.details == {"wave": "canary"}
        lg.record_end(
            op_id,
            "failed",
            error="resource failed",
            error_resource="urn:pulumi:acme.staging::p::t::db",
            error_component="backend",
            details={"ignore_lifecycle": True},
        )
        row = lg.operation(op_id)
        assert row.status == "failed" and row.ended is not None
        assert row.error_resource.endswith("::db") and row.error_component == "backend"
        assert row.details == {"wave": "canary", "ignore_lifecycle": True}  # merged
        with pytest.raises(LedgerError, match="unknown operation id"):
            lg.record_end(10_000, "succeeded")
        with pytest.raises(ValueError, match="invalid operation status"):
            lg.record_end(op_id, "great")
        with pytest.raises(ValueError, match="invalid operation status"):
            lg.record("r1", "acme", "staging", "acme.staging", "up", "weird")
        one = lg.record("r1", None, "staging", "shared", "up", "blocked", error="gate: not in testing")
        row = lg.operation(one)
        assert row.tenant is None and row.status == "blocked" and row.ended == row.started


def scenario_last_good_release(url: str) -> None:
    with Ledger(url) as lg:
        lg.start_run("r", "up")
        s = "acme.production"
        assert lg.last_good_release(s) is None
        _deploy(lg, "r", s, "R1", "succeeded", minute=1)
        r2 = _deploy(lg, "r", s, "R2", "succeeded", minute=2)
        _deploy(lg, "r", s, "R3", "failed", minute=3)  # failed rows never count
        lg.record("r", "acme", "production", s, "preview", "succeeded", release="R5")  # not a deploy
        lg.record("r", "acme", "production", "acme.staging", "up", "succeeded", release="R6")  # other stack
        assert lg.last_good_release(s, before_release="R3").id == r2
        assert lg.last_good_release(s).release == "R2"
        # the current release itself is skipped
        assert lg.last_good_release(s, before_release="R2").release == "R1"
        r3 = _deploy(lg, "r", s, "R3", "succeeded", minute=4)
        assert lg.last_good_release(s).id == r3
        assert lg.last_good_release(s, before_release="R3").id == r2
        # a succeeded rollback counts as a good release
        rb = _deploy(lg, "r", s, "R1", "succeeded", op="rollback", minute=5)
        assert lg.last_good_release(s, before_release="R9").id == rb
        assert lg.last_good_release(s, before_release="R1").id == r3
        assert lg.last_success(s).id == r3
        assert lg.last_success(s, "rollback").id == rb
        assert lg.last_success(s, "destroy") is None


def scenario_lifecycle_gates(url: str) -> None:
    with Ledger(url) as lg:
        lg.start_run("r", "up")
        _deploy(lg, "r", "a.testing", "R1", "succeeded", tenant="a", environment="testing")
        _deploy(lg, "r", "b.testing", "R1", "failed", tenant="b", environment="testing")
        _deploy(lg, "r", "testing", "R1", "succeeded", tenant=None, environment="testing")
        _deploy(lg, "r", "c.testing", "R1", "succeeded", tenant="c", environment="testing", op="rollback")
        _deploy(lg, "r", "d.staging", "R1", "succeeded", tenant="d", environment="staging")
        assert lg.succeeded_releases("testing", "R1") == {"a", None}
        assert lg.succeeded_releases("testing", "R2") == set()
        assert lg.release_reached("testing", "R1")
        assert lg.release_reached("staging", "R1")
        assert not lg.release_reached("production", "R1")
        assert not lg.release_reached("testing", "R0")


def scenario_failed_targets(url: str) -> None:
    with Ledger(url) as lg:
        lg.start_run("r1", "up")
        _deploy(lg, "r1", "a.staging", "R1", "succeeded", tenant="a")
        fb = _deploy(lg, "r1", "b.staging", "R1", "failed", tenant="b")
        # c failed first, then a recovery re-ran it successfully in the same run
        _deploy(lg, "r1", "c.staging", "R1", "failed", tenant="c")
        _deploy(lg, "r1", "c.staging", "R1", "succeeded", tenant="c")
        # d succeeded, then its health check errored: final status is error
        _deploy(lg, "r1", "d.staging", "R1", "succeeded", tenant="d")
        de = lg.record("r1", "d", "staging", "d.staging", "health", "error", error="unhealthy")
        ns = lg.record("r1", "e", "staging", "e.staging", "up", "not-started")
        lk = lg.record("r1", "f", "staging", "f.staging", "up", "locked")
        lg.record("r1", "g", "staging", "g.staging", "up", "skipped")
        lg.record("r1", "h", "staging", "h.staging", "up", "blocked")
        lg.start_run("r2", "up")
        _deploy(lg, "r2", "x.staging", "R1", "failed", tenant="x")  # another run
        failed = lg.failed_targets("r1")
        assert [r.id for r in failed] == [fb, de, ns, lk]
        assert [r.status for r in failed] == ["failed", "error", "not-started", "locked"]
        assert lg.failed_targets("nope") == []


def scenario_latest_by_stack_fleet(url: str) -> None:
    n = 1000
    with Ledger(url) as lg:
        lg.start_run("r", "up")
        # Bulk rows through the engine (this scenario is about the query, not
        # about 3,000 single-row transactions).
        rows = []
        base = {
            "run_id": "r",
            "environment": "production",
            "release": "R",
            "program_commit": None,
            "config_fingerprint": None,
            "config_snapshot": None,
            "ended": None,
            "changes": None,
            "error": None,
            "error_resource": None,
            "error_component": None,
            "details": None,
            "host": "h",
            "pid": 1,
        }
        for round_, (op, status) in enumerate([("up", "succeeded"), ("drift", "in-sync"), ("preview", "succeeded")]):
            for i in range(n):
                if round_ == 1 and i % 2:
                    continue  # half the fleet had no drift check
                rows.append(
                    {
                        **base,
                        "tenant": f"t{i:04d}",
                        "stack": f"t{i:04d}.production",
                        "operation": op,
                        "status": status,
                        "started": f"2024-05-01T12:{round_:02d}:00.000000+00:00",
                    }
                )
        with lg.engine.begin() as conn:
            conn.execute(ledger_mod.operations.insert(), rows)
        statements: list[str] = []

        def count(conn, cursor, statement, *args):
            if "FROM operations" in statement:
                statements.append(statement)

        event.listen(lg.engine, "before_cursor_execute", count)
        try:
            latest = lg.latest_by_stack()
        finally:
            event.remove(lg.engine, "before_cursor_execute", count)
        assert len(statements) == 1  # one query for the whole fleet
        assert len(latest) == n
        for i in range(n):
            row = latest[f"t{i:04d}.production"]
            assert row.operation == ("up" if i % 2 else "drift")  # preview is not a fleet operation
        with lg.engine.connect() as conn:
            newest_any = conn.execute(select(func.count()).select_from(ledger_mod.operations)).scalar()
        assert newest_any == 2500
        assert all(r.operation == "preview" for r in lg.latest_by_stack(None).values())
        some = lg.latest_by_stack(("up",), stacks=["t0001.production", "t0002.production"])
        assert sorted(some) == ["t0001.production", "t0002.production"]
        d = lg.record(
            "r",
            "t0002",
            "production",
            "t0002.production",
            "drift",
            "drifted",
            details={"resources": [{"urn": "urn:x", "diff": ["tag"]}]},
        )
        assert lg.latest_drift("t0002.production").id == d
        assert lg.latest_drift("t0002.production").details["resources"][0]["urn"] == "urn:x"
        assert lg.latest_drift("t0001.production") is None
        assert lg.latest_by_stack()["t0002.production"].status == "drifted"


def scenario_run_idempotent(url: str) -> None:
    with Ledger(url) as a, Ledger(url) as b:
        a.start_run(
            "ci-42",
            "up",
            argv=["up", "--shard", "0/2"],
            release="R1",
            shard="0/2",
            options={"concurrency": 4},
            started=_t(0),
        )
        b.start_run(
            "ci-42",
            "up",
            argv=["up", "--shard", "1/2"],
            release="R1",
            shard="1/2",
            options={"concurrency": 8},
            started=_t(1),
        )
        a.start_run("ci-42", "up", argv=["up", "--shard", "0/2"], release="R1", shard="0/2", started=_t(2))
        run = a.run("ci-42")
        assert isinstance(run, RunRow)
        assert run.started == _t(0) and run.shard == "0/2" and run.options == {"concurrency": 4}
        assert run.argv == ["up", "--shard", "0/2"] and run.status == "running"
        assert [p.part for p in run.parts] == ["0/2", "1/2"]
        a.finish_run("ci-42", "finished", {"succeeded": 3, "failed": 1})
        assert a.run("ci-42").status == "running"  # shard 1/2 still runs
        b.finish_run("ci-42", "finished", {"succeeded": 2, "skipped": 1})
        run = b.run("ci-42")
        assert run.status == "finished" and run.ended is not None
        assert run.counts == {"succeeded": 5, "failed": 1, "skipped": 1}
        assert json.loads(json.dumps(run.to_dict()))["parts"][1]["part"] == "1/2"
        a.start_run("plain", "drift", started=_t(5))
        a.finish_run("plain", "interrupted", {"in-sync": 1})
        assert a.run("plain").status == "interrupted" and a.run("plain").shard is None
        assert a.run("missing") is None
        assert a.last_run_id() == "plain"
        assert a.last_run_id("up") == "ci-42"
        assert a.last_run_id("destroy") is None
        with pytest.raises(LedgerError, match="unknown run"):
            a.finish_run("missing", "finished", {})
        with pytest.raises(ValueError):
            a.finish_run("plain", "running", {})


def scenario_secrets_stored_verbatim(url: str) -> None:
    snapshot = {
        "runner:db_password": {"secure": "v1:Zm9vYmFyYmF6cXV4"},
        "runner:api_key": "[secret]",
        "runner:domain": "acme.example.com",
        "nested": {"list": [1, "two", None, True], "unicode": "caf\u00e9 \u2603"},
    }
    argv = ["up", "--tenant", "acme", "--ledger", "postgresql://runner:***@db/ledger"]
    with Ledger(url) as lg:
        lg.start_run("r", "up", argv=argv, options={"tag": ["tier=premium"]})
        op = lg.record_start(
            "r",
            "acme",
            "production",
            "acme.production",
            "up",
            config_snapshot=snapshot,
            config_fingerprint="sha256:abc",
        )
        lg.record_end(op, "succeeded")
        row = lg.operation(op)
        assert row.config_snapshot == snapshot
        assert row.config_fingerprint == "sha256:abc"
        assert lg.run("r").argv == argv


def scenario_mark_interrupted(url: str) -> None:
    with Ledger(url) as lg:
        lg.start_run("dead-run", "up")
        op = lg.record_start("dead-run", "acme", "staging", "acme.staging", "up")
        done = lg.record("dead-run", "b", "staging", "b.staging", "up", "succeeded")
        me = os.getpid()
        # this host, our pid declared dead: both the part and the running op close
        affected = lg.mark_interrupted_runs(alive_pid_check=lambda pid: pid != me)
        assert affected == ["dead-run"]
        assert lg.run("dead-run").status == "interrupted"
        row = lg.operation(op)
        assert row.status == "failed" and row.error == "interrupted" and row.ended is not None
        assert lg.operation(done).status == "succeeded"
        assert [r.id for r in lg.failed_targets("dead-run")] == [op]
        lg.start_run("live-run", "up")
        live = lg.record_start("live-run", "acme", "staging", "acme.staging", "up")
        assert lg.mark_interrupted_runs() == []  # we are alive
        assert lg.mark_interrupted_runs(host="another-host", alive_pid_check=lambda pid: False) == []
        assert lg.operation(live).status == "running"
        assert lg.running_operations()[0].id == live


SCENARIOS = [
    scenario_schema_applied_once,
    scenario_newer_schema_refused,
    scenario_history_newest_first,
    scenario_running_then_end,
    scenario_last_good_release,
    scenario_lifecycle_gates,
    scenario_failed_targets,
    scenario_latest_by_stack_fleet,
    scenario_run_idempotent,
    scenario_secrets_stored_verbatim,
    scenario_mark_interrupted,
]


# ---------------------------------------------------------------------------
# multi-process helpers (fork start method: the children inherit these)


def _open_worker(url: str, barrier, errors) -> None:
    try:
        barrier.wait(30)
        with Ledger(url) as lg:
            assert lg.schema_version() == SCHEMA_VERSION
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        import traceback

        errors.put(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-8)}")


def scenario_concurrent_fresh_open(url: str, processes: int = 4) -> None:
    barrier = _fork.Barrier(processes)
    errors = _fork.Queue()
    procs = [_fork.Process(target=_open_worker, args=(url, barrier, errors)) for _ in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    assert [p.exitcode for p in procs] == [0] * processes
    with Ledger(url) as lg, lg.engine.connect() as conn:
        versions = conn.execute(select(ledger_schema.c.version).order_by(ledger_schema.c.version)).scalars().all()
    assert versions == list(range(1, SCHEMA_VERSION + 1))  # each migration applied exactly once


def _shard_worker(url: str, run_id: str, shard: int, shards: int, stacks: int, barrier, errors) -> None:
    try:
        with Ledger(url) as lg:
            barrier.wait(30)
            lg.start_run(run_id, "up", argv=["up", "--shard", f"{shard}/{shards}"], shard=f"{shard}/{shards}")
            for i in range(stacks):
                tenant = f"s{shard}-t{i}"
                op = lg.record_start(run_id, tenant, "production", f"{tenant}.production", "up", release="R1")
                lg.record_end(op, "failed" if i == 0 else "succeeded", changes={"create": i})
            lg.finish_run(run_id, "finished", {"succeeded": stacks - 1, "failed": 1})
    except BaseException as exc:  # noqa: BLE001
        errors.put(f"shard {shard}: {type(exc).__name__}: {exc}")


def scenario_concurrent_shards_one_run(url: str, shards: int = 3, stacks: int = 25) -> None:
    Ledger(url).close()  # schema first; the fresh-open race has its own test
    barrier = _fork.Barrier(shards)
    errors = _fork.Queue()
    procs = [
        _fork.Process(target=_shard_worker, args=(url, "pipeline-7", s, shards, stacks, barrier, errors))
        for s in range(shards)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    assert [p.exitcode for p in procs] == [0] * shards
    with Ledger(url) as lg:
        rows = lg.run_operations("pipeline-7")
        assert len(rows) == shards * stacks
        assert len({r.id for r in rows}) == len(rows)
        assert all(r.status in ("succeeded", "failed") for r in rows)
        assert len({r.pid for r in rows}) == shards
        run = lg.run("pipeline-7")
        assert run.status == "finished"
        assert [p.part for p in run.parts] == [f"{s}/{shards}" for s in range(shards)]
        assert run.counts == {"succeeded": shards * (stacks - 1), "failed": shards}
        assert sorted(r.tenant for r in lg.failed_targets("pipeline-7")) == [f"s{s}-t0" for s in range(shards)]


def scenario_threads(url: str, threads: int = 8, per_thread: int = 20) -> None:
    with Ledger(url) as lg:
        lg.start_run("t", "up")
        ids: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def work(n: int) -> None:
            try:
                for i in range(per_thread):
                    op = lg.record_start("t", f"t{n}", "staging", f"t{n}.staging", "up", release=str(i))
                    lg.record_end(op, "succeeded")
                    with lock:
                        ids.append(op)
                    lg.history(f"t{n}.staging", limit=1)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        assert len(set(ids)) == threads * per_thread
        assert len(lg.run_operations("t")) == threads * per_thread
        assert all(lg.history(f"t{n}.staging", limit=1)[0].release == str(per_thread - 1) for n in range(threads))


# ---------------------------------------------------------------------------
# the SQLite tests


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/ledger/ledger.db"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("scenario_"))
def test_scenario(scenario, url):
    scenario(url)


def test_two_processes_open_fresh_db_at_once(tmp_path):
    for attempt in range(3):  # several fresh databases: more chances to collide
        scenario_concurrent_fresh_open(f"sqlite:///{tmp_path}/fresh{attempt}.db", processes=4)


def test_processes_write_one_run(url):
    scenario_concurrent_shards_one_run(url)


def test_threads_share_one_ledger(url):
    scenario_threads(url)


def test_sqlite_uses_wal(url, tmp_path):
    with Ledger(url) as lg, lg.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar().lower() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    assert (tmp_path / "ledger" / "ledger.db").exists()


def test_new_migration_applied_once_on_reopen(url, monkeypatch):
    Ledger(url).close()
    calls: list[int] = []

    def m_extra(conn):
        calls.append(1)
        conn.exec_driver_sql("CREATE TABLE extra (x INTEGER)")

    monkeypatch.setattr(ledger_mod, "MIGRATIONS", [*ledger_mod.MIGRATIONS, m_extra])
    monkeypatch.setattr(ledger_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with Ledger(url) as lg:
        assert lg.schema_version() == SCHEMA_VERSION + 1
    with Ledger(url) as lg:
        assert lg.schema_version() == SCHEMA_VERSION + 1
    assert calls == [1]


def test_failed_migration_rolls_back(url, monkeypatch):
    Ledger(url).close()

    def m_broken(conn):
        conn.exec_driver_sql("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(ledger_mod, "MIGRATIONS", [*ledger_mod.MIGRATIONS, m_broken])
    monkeypatch.setattr(ledger_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="migration bug"):
        Ledger(url)
    monkeypatch.undo()
    with Ledger(url) as lg, lg.engine.connect() as conn:
        assert lg.schema_version() == SCHEMA_VERSION
        assert conn.exec_driver_sql("SELECT count(*) FROM sqlite_master WHERE name='half'").scalar() == 0


def test_in_memory_ledger_across_threads():
    with Ledger("sqlite://") as lg:
        lg.start_run("m", "up")
        t = threading.Thread(target=lambda: lg.record("m", "a", "e", "a.e", "up", "succeeded"))
        t.start()
        t.join()
        assert len(lg.run_operations("m")) == 1


def test_timestamps_are_utc_text():
    naive = datetime(2024, 1, 2, 3, 4, 5)
    aware = datetime(2024, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert ledger_mod._ts(naive) == "2024-01-02T03:04:05.000000+00:00"
    assert ledger_mod._ts(aware) == "2024-01-02T03:04:05.000000+00:00"
    assert ledger_mod._parse_ts(ledger_mod._ts(aware)) == aware
    with Ledger("sqlite://") as lg:
        lg.start_run("r", "up")
        op = lg.record("r", "a", "e", "a.e", "up", "succeeded", started=aware)
        assert lg.operation(op).started == aware
        assert lg.operation(op).started.utcoffset() == timedelta(0)


def test_urls(tmp_path):
    assert normalize_url("postgresql://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    assert normalize_url(tmp_path / "l.db") == f"sqlite:///{tmp_path / 'l.db'}"
    assert default_ledger_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/.runner/ledger.db"
    for bad in ("mysql://h/db", "postgresql+psycopg2://h/db", ""):
        with pytest.raises(LedgerError):
            normalize_url(bad)
    with Ledger(default_ledger_url(tmp_path)) as lg:
        assert lg.dialect == "sqlite"
    assert (tmp_path / ".runner" / "ledger.db").exists()


def test_closed_ledger_refuses(url):
    lg = Ledger(url)
    lg.close()
    lg.close()  # idempotent
    with pytest.raises(LedgerError, match="closed"):
        lg.history("x")
