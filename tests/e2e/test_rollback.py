"""Releases, history and rollback to the last good release, with the real engine."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e


def _tree(path: Path) -> dict[str, str]:
    """Every file under `path` (links resolved) with its content hash."""
    root = path.resolve()
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _outputs(sandbox, stack_tenant: str) -> dict:
    result = sandbox.run("outputs", "--tenant", stack_tenant, "--env", "staging", "--json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def test_rollback_returns_a_tenant_to_the_last_good_release(sandbox):
    def release(version: str, **config):
        sandbox.write_registry([tenant("acme", config={"app_version": version, **config})])
        return sandbox.run("up", "--tenant", "acme", "--yes", "--json", "--release", f"v{version[0]}")

    assert release("1.0.0").code == 0
    assert release("2.0.0").code == 0
    good = _outputs(sandbox, "acme")
    site_v2 = _tree(Path(good["site_dir"]))
    backend_v2 = _tree(Path(good["backend_url"].removeprefix("file://")))

    broken = release("3.0.0", migrations_dir=str(sandbox.broken_migrations()))
    assert broken.code == 1
    assert broken.by_stack()["acme.staging"]["error_component"] == "runner:local:Backend"

    back = sandbox.run("rollback", "--tenant", "acme", "--env", "staging", "--yes", "--json")
    assert back.code == 0, back.stderr
    row = back.by_stack()["acme.staging"]
    assert row["operation"] == "rollback" and row["details"]["rollback_to"] == "v2"

    now = _outputs(sandbox, "acme")
    assert now == good
    assert _tree(Path(now["site_dir"])) == site_v2
    assert _tree(Path(now["backend_url"].removeprefix("file://"))) == backend_v2

    history = sandbox.run("history", "--tenant", "acme", "--env", "staging", "--json")
    rows = [(r["operation"], r["release"], r["status"]) for r in reversed(json.loads(history.stdout))]
    assert rows == [("up", "v1", "succeeded"), ("up", "v2", "succeeded"), ("up", "v3", "failed"),
                    ("rollback", "v2", "succeeded")]


def test_on_failure_rollback_returns_only_the_broken_tenant(sandbox):
    tenants = [tenant(f"shop-{i}") for i in range(1, 5)]
    sandbox.write_registry(tenants)
    assert sandbox.run("up", "--all-tenants", "--yes", "--release", "r1", "--concurrency", "2").code == 0

    tenants = [tenant(f"shop-{i}", config={"app_version": "2.0.0"}) for i in range(1, 5)]
    tenants[2]["config"]["migrations_dir"] = str(sandbox.broken_migrations())
    sandbox.write_registry(tenants)
    result = sandbox.run("up", "--all-tenants", "--yes", "--release", "r2", "--on-failure", "rollback",
                         "--concurrency", "2", "--json")

    assert result.code == 1
    rows = [(t["stack"], t["operation"], t["status"]) for t in result.json["targets"]]
    assert ("shop-3.staging", "up", "failed") in rows
    assert ("shop-3.staging", "rollback", "succeeded") in rows
    assert rows.index(("shop-3.staging", "rollback", "succeeded")) == rows.index(("shop-3.staging", "up", "failed")) + 1
    for i in (1, 2, 4):
        assert _outputs(sandbox, f"shop-{i}")["release"] == "r2"
    assert _outputs(sandbox, "shop-3")["release"] == "r1"
