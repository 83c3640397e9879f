"""Reports survive any text (#15.4), on the real engine."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import uuid
import xml.etree.ElementTree as ET

import pytest

from runner import recovery
from tests.e2e.conftest import PROJECT_DIR, tenant


def test_an_error_with_markup_and_a_control_character_still_writes_every_report(sandbox):
    migrations = sandbox.root / "migrations-markup"
    shutil.copytree(PROJECT_DIR / "stacks" / "migrations", migrations)
    # sqlite answers `no such table: [/tmp]\x07`: rich markup and a control character in one error
    (migrations / "900_markup.sql").write_text('SELECT * FROM "[/tmp]\x07";\n')
    tenants = [tenant("shop-1"), tenant("shop-2", config={"migrations_dir": str(migrations)})]
    sandbox.write_registry(tenants)
    junit, report_json, step = (sandbox.root / name for name in ("junit.xml", "report.json", "step.md"))

    result = sandbox.run(
        "up",
        "--all-tenants",
        "--yes",
        "--json",
        "--junit",
        str(junit),
        "--report-json",
        str(report_json),
        env={"GITHUB_STEP_SUMMARY": str(step)},
    )

    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    failed = result.by_stack()["shop-2.staging"]
    assert failed["status"] == "failed" and "[/tmp]\x07" in failed["error_message"], failed
    assert result.by_stack()["shop-1.staging"]["status"] == "succeeded"
    assert json.loads(report_json.read_text())["counts"] == result.json["counts"]
    message = ET.parse(junit).getroot().find("testcase[@name='shop-2.staging']/failure").get("message")
    assert "[/tmp]" in message
    assert "shop-2.staging" in step.read_text()
    summary_row = next(line for line in result.stderr.splitlines() if "shop-2.staging" in line and "[/tmp]" in line)
    assert "failed" in summary_row


# ---------------------------------------------------------------- #15.10: Ctrl-C


def _export(sandbox, stack: str) -> dict:
    """The stack's state, exported by the engine itself."""
    home = sandbox.root / "export-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": f"{sandbox.engine_bin}:/usr/bin:/bin",
        "PULUMI_HOME": str(home),
        "PULUMI_BACKEND_URL": (sandbox.state / "state").resolve().as_uri(),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_CONFIG_PASSPHRASE": "",
    }
    proc = subprocess.run(
        ["pulumi", "stack", "export", "--stack", f"organization/runner/{stack}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=sandbox.root,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["deployment"]


@pytest.mark.parametrize(
    "send",
    [
        lambda pid: os.killpg(pid, signal.SIGINT),  # what Ctrl-C at a terminal does: the whole group
        lambda pid: os.kill(pid, signal.SIGTERM),  # CI cancelling a job, Kubernetes stopping a pod: the runner only
    ],
    ids=["sigint-to-group", "sigterm-to-runner"],
)
def test_ctrl_c_to_the_process_group_cancels_engines_gracefully_and_a_rerun_completes(sandbox, send):
    sandbox.write_registry([tenant(f"shop-{i}") for i in range(1, 5)])
    proc = sandbox.popen("up", "--all-tenants", "--yes", "--json", "--log-format", "json", "--concurrency", "1")
    lines = []
    for line in proc.stderr:  # progress lines: wait until a tenant's engine is mid-update
        lines.append(line)
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (record.get("stack") or "shared") != "shared" and record.get("op") == "create":
            send(proc.pid)
            break
    else:
        raise AssertionError("no tenant update was seen:\n" + "".join(lines))
    stdout, stderr = proc.communicate(timeout=600)
    stderr = "".join(lines) + stderr

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    doc = json.loads(stdout)
    statuses = {t["stack"]: t["status"] for t in doc["targets"]}
    assert "not-started" in statuses.values(), statuses  # nothing new started after the signal
    for target in doc["targets"]:
        assert "worker exited" not in (target["error"] or ""), target
        if target["status"] == "failed":
            assert "interrupted" in target["error"], target
    locks = sandbox.state / "state" / ".pulumi" / "locks"
    assert not [p for p in locks.rglob("*.json")] if locks.exists() else True
    stacks = ["shared", *statuses]
    for stack in stacks:
        stack_file = sandbox.state / "state" / ".pulumi" / "stacks" / "runner" / f"{stack}.json"
        if stack_file.exists():
            assert not _export(sandbox, stack).get("pending_operations"), stack

    again = sandbox.run("up", "--all-tenants", "--yes", "--json")

    assert again.code == 0, again.stderr
    assert {t["status"] for t in again.json["targets"]} == {"succeeded"}
    counts = set()
    for stack in statuses:
        urns = [r["urn"] for r in _export(sandbox, stack)["resources"]]
        assert len(urns) == len(set(urns)), stack
        counts.add(len(urns))
    assert len(counts) == 1, counts  # every tenant holds the same resources, none twice


# ---------------------------------------------------------------- #15.8: locks of a postgres:// state backend


@pytest.fixture
def pg_backend(postgres_server) -> str:
    state_db = postgres_server.create_database(f"state_{uuid.uuid4().hex[:12]}")
    return postgres_server.url(state_db).replace("postgresql://", "postgres://", 1) + "?sslmode=disable"


@pytest.mark.postgres
def test_postgres_state_locks_are_kept_unless_provably_dead_and_removed_when_they_are(sandbox, pg_backend):
    import psycopg

    sandbox.write_registry([tenant("pg-1")])
    assert sandbox.run("up", "--tenant", "pg-1", "--yes", "--backend", pg_backend).code == 0
    holder = subprocess.Popen(["sleep", "60"])
    started = recovery.start_time(holder.pid)
    holder.kill()
    holder.wait()
    database = pg_backend.split("?")[0].rsplit("/", 1)[1]  # the engine prefixes its keys with the URL's path
    key = f"{database}/.pulumi/locks/organization/runner/pg-1.staging/{uuid.uuid4()}.json"
    content = json.dumps(
        {"pid": holder.pid, "username": "root", "hostname": socket.gethostname(), "timestamp": "2026-11-27T12:00:00Z"}
    ).encode()
    url = pg_backend.split("?")[0]
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO pulumi_state (key, data) VALUES (%s, %s)",
            (key, json.dumps({"data": base64.b64encode(content).decode()})),
        )

    def lock_rows() -> list:
        with psycopg.connect(url) as conn:
            return conn.execute("SELECT key FROM pulumi_state WHERE key = %s", (key,)).fetchall()

    kept = sandbox.run("up", "--tenant", "pg-1", "--yes", "--json", "--backend", pg_backend, "--lock-timeout", "2")

    assert kept.code == 4, kept.stderr[-2000:]
    error = kept.by_stack()["pg-1.staging"]["error"]
    assert "not known to have run in this PID namespace" in error and f"WHERE key = '{key}'" in error, error
    assert lock_rows()

    # what a worker of this runner would have recorded of the engine it started
    recovery.write_holder_record(recovery.holders_dir(sandbox.state / "work"), "pg-1.staging", {holder.pid: started})
    recovered = sandbox.run("up", "--tenant", "pg-1", "--yes", "--json", "--backend", pg_backend, "--lock-timeout", "2")

    assert recovered.code == 0, recovered.stderr[-2000:]
    assert not lock_rows()
    assert any(
        f"dead pid {holder.pid}" in line
        for line in recovered.by_stack()["pg-1.staging"]["details"].get("recovered", [])
    )
