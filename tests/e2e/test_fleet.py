"""Fleet operations through the real CLI and the real engine (issue: runner core)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e


def _max_overlap(targets: list[dict]) -> int:
    events = []
    for t in targets:
        if t["started"] and t["ended"]:
            events += [(datetime.fromisoformat(t["started"]), 1), (datetime.fromisoformat(t["ended"]), -1)]
    running = peak = 0
    for _, delta in sorted(events, key=lambda e: (e[0], e[1])):
        running += delta
        peak = max(peak, running)
    return peak


def test_one_broken_tenant_fails_alone_with_the_component_and_sql_error_named(sandbox):
    broken = sandbox.broken_migrations()
    tenants = [tenant(f"shop-{i}") for i in range(1, 5)]
    tenants[3]["config"] = {"migrations_dir": str(broken)}
    sandbox.write_registry(tenants)
    junit = sandbox.root / "junit.xml"

    result = sandbox.run("up", "--all-tenants", "--yes", "--concurrency", "2", "--json", "--junit", str(junit))

    assert result.code == 1, result.stderr
    doc = result.json  # stdout is exactly one JSON document
    assert {"run_id", "command", "counts", "targets"} <= set(doc)
    assert doc["counts"]["succeeded"] == 3 and doc["counts"]["failed"] == 1
    failed = result.by_stack()["shop-4.staging"]
    assert failed["status"] == "failed"
    assert failed["error_component"] == "runner:local:Backend"
    assert "900_broken.sql" in failed["error"] and "syntax error" in failed["error"]
    for stack, target in result.by_stack().items():
        assert set(target) >= {"tenant", "environment", "stack", "status", "changes", "started", "ended", "error"}
        if stack != "shop-4.staging":
            assert target["status"] == "succeeded" and target["changes"]["create"] > 0
    assert _max_overlap(doc["targets"]) <= 2
    assert "shop-4.staging" in result.stderr and "failed" in result.stderr

    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "1"
    failures = suite.findall("testcase/failure")
    assert len(failures) == 1 and "900_broken.sql" in failures[0].get("message")


def test_max_failures_leaves_later_targets_not_started(sandbox):
    broken = sandbox.broken_migrations()
    tenants = [tenant(f"shop-{i}") for i in range(1, 5)]
    for t in tenants[:2]:
        t["config"] = {"migrations_dir": str(broken)}
    sandbox.write_registry(tenants)

    junit = sandbox.root / "junit.xml"

    result = sandbox.run(
        "up", "--all-tenants", "--yes", "--concurrency", "1", "--max-failures", "1", "--json", "--junit", str(junit)
    )

    assert result.code == 1
    statuses = {s: t["status"] for s, t in result.by_stack().items()}
    assert statuses == {
        "shop-1.staging": "failed",
        "shop-2.staging": "not-started",
        "shop-3.staging": "not-started",
        "shop-4.staging": "not-started",
    }
    assert "--max-failures 1" in result.by_stack()["shop-3.staging"]["error"]
    # #22.8: not-started targets are skipped test cases, not failures; the shared stack is a
    # labelled row of the summary and its own JSON key, never one of the targets
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "3")
    assert sorted(c.get("name") for c in suite.findall("testcase") if c.find("skipped") is not None) == [
        "shop-2.staging",
        "shop-3.staging",
        "shop-4.staging",
    ]
    assert result.json["shared"]["status"] == "succeeded" and "shared" not in result.by_stack()
    assert "shared (shared stack)" in result.stderr


def test_two_runners_on_one_tenant_never_corrupt_state(sandbox):
    sandbox.write_registry([tenant("solo")])
    first = sandbox.popen("up", "--tenant", "solo", "--yes", "--json", "--lock-timeout", "300")
    time.sleep(0.5)
    second = sandbox.popen("up", "--tenant", "solo", "--yes", "--json", "--lock-timeout", "1")
    codes = sorted(p.wait(timeout=600) for p in (first, second))
    assert codes in ([0, 0], [0, 4]), codes
    if codes == [0, 4]:
        locked = [p for p in (first, second) if p.returncode == 4][0]
        assert '"locked"' in locked.stdout.read()
    check = sandbox.run("preview", "--tenant", "solo", "--detailed-exitcode", "--json")
    assert check.code == 0, check.stderr
    assert set(check.by_stack()["solo.staging"]["changes"]) == {"same"}
