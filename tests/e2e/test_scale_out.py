"""Scale-out: several runner processes (``--shard I/N``) against one PostgreSQL
server holding both the Pulumi state (``postgres://`` DIY backend) and the
ledger (``postgresql://``), as separate CI jobs / machines would run them.

Each "machine" has its own RUNNER_STATE_DIR (work areas, logs, generated stack
config) and shares only the backend, the ledger, the registry, the local
platform root and RUNNER_PASSPHRASE. So these tests also check that a stack
created on one machine can be deployed and previewed on another one that never
saw its stack config file.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from runner.ledger import Ledger
from runner.shard import select_shard
from tests.e2e.conftest import PROJECT_DIR, RUNNER, Sandbox, tenant

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SHARDS = 3
TENANTS = 30
PASSPHRASE = "scale-out-test-passphrase"
SECRET_TENANT = "org-00"  # has a secret: its config needs the stack's encryption salt
ENV = {"RUNNER_PASSPHRASE": PASSPHRASE, "SCALE_OUT_DB_PASSWORD": "correct-horse"}
RELEASE = "scale-out-1"  # explicit: the default (the git commit) may move while the test runs


def machine(sandbox: Sandbox, name: str) -> Sandbox:
    """The same registry and platform, but its own state dir: another machine."""
    other = copy.copy(sandbox)
    other.state = sandbox.root / "machines" / name / ".runner"
    return other


class Proc:
    """A runner process whose stdout/stderr go to files (no pipe can fill up)."""

    def __init__(self, box: Sandbox, name: str, *args: str):
        self.name = name
        self.out = box.root / f"{name}.stdout"
        self.err = box.root / f"{name}.stderr"
        self.started = time.monotonic()
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [RUNNER, *args],
                stdout=out,
                stderr=err,
                cwd=PROJECT_DIR,
                env=box.env(**ENV),
                start_new_session=True,
                text=True,
            )
        self.elapsed: float | None = None

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} still running after {timeout}s:\n{self.stderr[-3000:]}") from None
        self.elapsed = self.elapsed or time.monotonic() - self.started
        return code

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    @property
    def json(self) -> dict:
        return json.loads(self.out.read_text())


@pytest.fixture
def pg_urls(postgres_server) -> tuple[str, str]:
    """(backend, ledger): two databases of the one server."""
    suffix = uuid.uuid4().hex[:12]
    state_db = postgres_server.create_database(f"state_{suffix}")
    ledger_db = postgres_server.create_database(f"ledger_{suffix}")
    # Pulumi registers only the `postgres` scheme; lib/pq wants sslmode=disable for a local server.
    backend = postgres_server.url(state_db).replace("postgresql://", "postgres://", 1) + "?sslmode=disable"
    return backend, postgres_server.url(ledger_db)


def _tenants() -> list[dict]:
    rows = [tenant(f"org-{i:02d}") for i in range(TENANTS)]
    rows[0] = tenant(SECRET_TENANT, secrets={"db_password": {"env": "SCALE_OUT_DB_PASSWORD"}})
    return rows


def _wait_for_running_tenant(ledger_url: str, run_id: str, timeout: float = 180) -> bool:
    """True once a shard is deploying a tenant stack (its `up` row has no end yet): the shards
    are past the shared stack. The ledger's tables exist once the shards started."""
    deadline = time.monotonic() + timeout
    with Ledger(ledger_url) as ledger:
        while time.monotonic() < deadline:
            if any(r.stack != "shared" and r.ended is None for r in ledger.run_operations(run_id)):
                return True
            time.sleep(0.2)
    return False


def _hold_lock(backend: str, stack: str, pid: int) -> str:
    """A lock row of `stack` in the postgres:// state, as the engine writes it, held by `pid`
    (a live process of this host that no runner recorded: never provably dead, so kept)."""
    import psycopg

    url = backend.split("?")[0]
    key = f"{url.rsplit('/', 1)[1]}/.pulumi/locks/organization/runner/{stack}/{uuid.uuid4()}.json"
    content = json.dumps(
        {
            "pid": pid,
            "username": "root",
            "hostname": socket.gethostname(),
            "timestamp": datetime.now().astimezone().isoformat(),
        }
    ).encode()
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO pulumi_state (key, data) VALUES (%s, %s)",
            (key, json.dumps({"data": base64.b64encode(content).decode()})),
        )
    return key


def _release_lock(backend: str, key: str) -> None:
    import psycopg

    with psycopg.connect(backend.split("?")[0]) as conn:
        conn.execute("DELETE FROM pulumi_state WHERE key = %s", (key,))


def test_three_shards_share_postgres_state_and_ledger(sandbox, pg_urls, tmp_path):
    backend, ledger_url = pg_urls
    sandbox.write_registry(_tenants())
    stacks = {f"org-{i:02d}.staging" for i in range(TENANTS)}
    run_id = f"scale-{uuid.uuid4().hex[:8]}"
    common = ("--backend", backend, "--ledger", ledger_url)

    started = time.monotonic()
    shards = [
        Proc(
            machine(sandbox, f"shard-{i}"),
            f"shard-{i}",
            "up",
            "--all-tenants",
            "--shard",
            f"{i}/{SHARDS}",
            "--run-id",
            run_id,
            "--release",
            RELEASE,
            "--concurrency",
            "2",
            "--lock-timeout",
            "300",
            "--yes",
            "--json",
            "--log-format",
            "json",
            *common,
        )
        for i in range(SHARDS)
    ]

    # A fourth runner on a tenant whose lock is held (a live process holds it, as a running
    # engine would): it must end `locked` (exit 4), never break the state. The shard that owns
    # the tenant meets the same lock: it records the locked attempt, waits, and deploys it once
    # the lock is released. Its own run id keeps the intruder out of the shards' merged report.
    owner = 0
    contested = sorted(select_shard(sorted(stacks), owner, SHARDS, key=lambda s: s))[-1].split(".")[0]
    assert _wait_for_running_tenant(ledger_url, run_id), "no shard started a tenant: " + "\n".join(
        p.stderr[-2000:] for p in shards
    )
    holder = subprocess.Popen(["sleep", "600"])
    try:
        lock_key = _hold_lock(backend, f"{contested}.staging", holder.pid)
        intruder_box = machine(sandbox, "intruder")
        intruder = Proc(
            intruder_box,
            "intruder",
            "up",
            "--tenant",
            contested,
            "--run-id",
            f"{run_id}-intruder",
            "--release",
            RELEASE,
            "--lock-timeout",
            "3",
            "--yes",
            "--json",
            *common,
        )
        intruder_code = intruder.wait(timeout=300)
        # the owning shard reaches the locked tenant and waits for it before we let it go
        with Ledger(ledger_url) as ledger:
            deadline = time.monotonic() + 300
            while (
                not any(
                    r.stack == f"{contested}.staging" and r.status == "locked" for r in ledger.run_operations(run_id)
                )
                and time.monotonic() < deadline
            ):
                time.sleep(0.5)
        _release_lock(backend, lock_key)
    finally:
        holder.kill()
        holder.wait()
    assert intruder_code == 4, f"intruder exit {intruder_code}:\n{intruder.stderr[-4000:]}"
    blocked = intruder.json["targets"]
    assert [(t["stack"], t["status"]) for t in blocked] == [(f"{contested}.staging", "locked")], blocked
    assert "still locked by another operation" in blocked[0]["error"], blocked[0]["error"]

    codes = [p.wait(timeout=420) for p in shards]
    wall = time.monotonic() - started
    assert codes == [0] * SHARDS, "\n\n".join(
        f"{p.name} exit {c}:\n{p.stderr[-4000:]}" for p, c in zip(shards, codes, strict=False)
    )

    # Everything below is checked and reported together: one run costs minutes.
    problems: list[str] = []

    def check(ok: bool, message) -> None:
        if not ok:
            problems.append(str(message))

    # --- the shards' own reports: disjoint, all 30, as rendezvous hashing says
    per_shard = [{t["stack"] for t in p.json["targets"] if t["stack"] != "shared"} for p in shards]
    for i, got in enumerate(per_shard):
        expected = set(select_shard(sorted(stacks), i, SHARDS, key=lambda s: s))
        check(got == expected, f"shard {i}/{SHARDS} ran {sorted(got)}, rendezvous hashing says {sorted(expected)}")
    for a in range(SHARDS):
        for b in range(a + 1, SHARDS):
            check(not per_shard[a] & per_shard[b], f"shards {a} and {b} both ran {per_shard[a] & per_shard[b]}")
    check(set().union(*per_shard) == stacks, f"no shard ran {stacks - set().union(*per_shard)}")
    statuses = Counter(t["status"] for p in shards for t in p.json["targets"])
    check(statuses == {"succeeded": TENANTS}, f"shard report statuses: {dict(statuses)}")

    # --- the shared ledger: every tenant deployed exactly once, the shared stack updated once
    with Ledger(ledger_url) as ledger:
        rows = ledger.run_operations(run_id)
        run = ledger.run(run_id)
    ups = Counter(r.stack for r in rows if r.operation == "up" and r.status == "succeeded")
    tenant_ups = {s: n for s, n in ups.items() if s != "shared"}
    check(
        tenant_ups == {s: 1 for s in stacks},
        f"succeeded tenant ups other than once each: { {s: tenant_ups.get(s, 0) for s in stacks if tenant_ups.get(s) != 1} }",
    )
    shared_rows = [(r.operation, r.status, r.pid, r.error) for r in rows if r.stack == "shared"]
    check(ups["shared"] == 1, f"{ups['shared']} succeeded shared ups in the run: {shared_rows}")
    tenant_rows = [r for r in rows if r.stack != "shared" and r.status != "locked"]
    check(len(tenant_rows) == TENANTS, f"tenant rows: {Counter((r.operation, r.status) for r in tenant_rows)}")
    # (shards also wait for each other on the shared stack: not counted here)
    waits = [r for r in rows if r.status == "locked" and r.stack != "shared"]
    check(
        waits and {r.stack for r in waits} == {f"{contested}.staging"},
        f"the owning shard recorded no wait on the held lock, or waited on another tenant: "
        f"{[(r.stack, r.error) for r in waits]}",
    )
    check(run is not None and run.status == "finished", f"run: {run}")
    check(
        run is not None and {p.part for p in run.parts} == {f"{i}/{SHARDS}" for i in range(SHARDS)},
        f"run parts: {run and run.parts}",
    )

    # --- the merged report of the run, read back from the ledger on another machine
    reader = machine(sandbox, "reporter")
    junit = tmp_path / "merged.xml"
    merged = reader.run("report", "--run-id", run_id, "--json", "--junit", str(junit), *common, env=ENV)
    assert merged.code == 0, f"runner report exit {merged.code}: {merged.stderr[-2000:]}"
    counts = merged.json["counts"]
    check(
        counts == {"total": TENANTS, "succeeded": TENANTS},
        f"merged counts {counts}; non-tenant rows: "
        f"{[(t['stack'], t['operation'], t['status']) for t in merged.json['targets'] if t['stack'] not in stacks]}",
    )
    check({t["stack"] for t in merged.json["targets"]} >= stacks, "the merged report misses tenants")
    suite = ET.parse(junit).getroot()
    check(
        (suite.get("tests"), suite.get("failures")) == (str(TENANTS), "0"),
        f"JUnit tests={suite.get('tests')} failures={suite.get('failures')}",
    )

    # --- the state is valid after the intruder, seen from a machine without the stack config files
    fresh = machine(sandbox, "fresh")
    for target in sorted({contested, SECRET_TENANT}):
        preview = fresh.run("preview", "--tenant", target, "--detailed-exitcode", "--json", *common, env=ENV)
        check(
            preview.code == 0, f"preview {target} from a fresh machine: exit {preview.code}: {preview.stderr[-2000:]}"
        )
        if preview.code == 0:
            changes = preview.by_stack()[f"{target}.staging"]["changes"]
            check(set(changes) == {"same"}, f"preview {target}: {changes}")
    # ...and deployable from there (the secret needs the stack's encryption salt, kept in the state)
    again = fresh.run("up", "--tenant", SECRET_TENANT, "--release", RELEASE, "--yes", "--json", *common, env=ENV)
    check(again.code == 0, f"up {SECRET_TENANT} from a fresh machine: exit {again.code}: {again.stderr[-2000:]}")
    if again.code == 0:
        changes = again.by_stack()[f"{SECRET_TENANT}.staging"]["changes"]
        check(set(changes) == {"same"}, f"up {SECRET_TENANT} from a fresh machine: {changes}")

    # --- the Pulumi state really is in PostgreSQL (lib/pq URL, default table pulumi_state)
    import psycopg

    state_db = backend.split("?", 1)[0].rsplit("/", 1)[1]
    with psycopg.connect(ledger_url.rsplit("/", 1)[0] + "/" + state_db) as conn:
        keys = conn.execute("SELECT count(*) FROM pulumi_state").fetchone()[0]
    check(keys > TENANTS, f"only {keys} rows in pulumi_state")

    durations = sorted(r.duration for r in tenant_rows if r.operation == "up" and r.duration)
    metrics = {
        "tenants": TENANTS,
        "shards": SHARDS,
        "concurrency_per_shard": 2,
        "cpus": os.cpu_count(),
        "wall_s": round(wall, 1),
        "per_target_mean_s": round(sum(durations) / len(durations), 2),
        "per_target_median_s": round(durations[len(durations) // 2], 2),
        "per_target_max_s": round(durations[-1], 2),
        "throughput_targets_per_min": round(TENANTS / wall * 60, 1),
        "shard_wall_s": [
            round(
                (datetime.fromisoformat(p.json["ended"]) - datetime.fromisoformat(p.json["started"])).total_seconds(), 1
            )
            for p in shards
        ],
        "intruder": {
            "tenant": contested,
            "exit": intruder_code,
            "results": [(t["stack"], t["operation"], t["status"]) for t in blocked],
        },
    }
    print("\nscale-out metrics:", json.dumps(metrics))
    if out := os.environ.get("SCALE_OUT_METRICS"):
        Path(out).write_text(json.dumps(metrics, indent=2) + "\n")
    assert not problems, "\n".join(problems)
