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
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


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
    assert rows == [
        ("up", "v1", "succeeded"),
        ("up", "v2", "succeeded"),
        ("up", "v3", "failed"),
        ("rollback", "v2", "succeeded"),
    ]


def test_on_failure_rollback_returns_only_the_broken_tenant(sandbox):
    tenants = [tenant(f"shop-{i}") for i in range(1, 5)]
    sandbox.write_registry(tenants)
    assert sandbox.run("up", "--all-tenants", "--yes", "--release", "r1", "--concurrency", "2").code == 0

    tenants = [tenant(f"shop-{i}", config={"app_version": "2.0.0"}) for i in range(1, 5)]
    tenants[2]["config"]["migrations_dir"] = str(sandbox.broken_migrations())
    sandbox.write_registry(tenants)
    result = sandbox.run(
        "up", "--all-tenants", "--yes", "--release", "r2", "--on-failure", "rollback", "--concurrency", "2", "--json"
    )

    assert result.code == 1
    rows = [(t["stack"], t["operation"], t["status"]) for t in result.json["targets"]]
    assert ("shop-3.staging", "up", "failed") in rows
    assert ("shop-3.staging", "rollback", "succeeded") in rows
    assert rows.index(("shop-3.staging", "rollback", "succeeded")) == rows.index(("shop-3.staging", "up", "failed")) + 1
    for i in (1, 2, 4):
        assert _outputs(sandbox, f"shop-{i}")["release"] == "r2"
    assert _outputs(sandbox, "shop-3")["release"] == "r1"


# --------------------------------------------------------------------------- across commits
# A break committed to the program (a migration, a program change) and rolled back to the
# release of an earlier commit: that commit's program runs from a worktree, with the paths it
# resolved when deployed (the default, relative platform root), its own migrations and config.
# The commits go to a temporary clone of the project (RUNNER_PROJECT_DIR), never to the real repo.

import sqlite3  # noqa: E402

from tests.e2e.conftest import Sandbox, project_clone  # noqa: E402

BROKEN_SQL = "CREATE TABLEE broken (id INTEGER);\n"


@pytest.fixture(scope="module")
def fleet_at_c1(tmp_path_factory, engine_bin):
    """Three tenants deployed from the clone's first commit (c1), platform root left relative."""
    root = tmp_path_factory.mktemp("commits")
    sandbox = Sandbox(root, engine_bin)
    sandbox.project = project_clone(root)
    sandbox.write_registry(
        [tenant("shop-1"), tenant("shop-2"), tenant("shop-3")], defaults={"platform_root": ".runner/platform"}
    )
    c1 = sandbox.release()
    deployed = sandbox.run("up", "--all-tenants", "--yes", "--json", "--concurrency", "2")
    assert deployed.code == 0, deployed.stderr
    sandbox.c1 = c1
    sandbox.head = sandbox.git("rev-parse", "HEAD")  # what each test returns the clone to
    sandbox.good = {s: t["outputs"] for s, t in deployed.by_stack().items()}
    return sandbox


@pytest.fixture
def fleet(fleet_at_c1):
    """The module's fleet; the clone is back at c1, clean, after each test."""
    yield fleet_at_c1
    fleet_at_c1.git("reset", "-q", "--hard", fleet_at_c1.head)
    fleet_at_c1.git("clean", "-q", "-fd")


def _assert_at_release(sandbox, stack: str, release: str, not_release: str) -> None:
    """On disk: the database has exactly the good migrations, the site and the app name `release`."""
    outputs = sandbox.good[stack]
    with sqlite3.connect(outputs["database_path"]) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == ["001_create_accounts", "002_create_orders"]
    site = (Path(outputs["site_dir"]) / "index.html").read_text()
    assert release in site and not_release not in site
    app = json.loads((Path(outputs["backend_url"].removeprefix("file://")) / "app.json").read_text())
    assert app["release"] == release
    assert Path(outputs["account_dir"]).is_relative_to(sandbox.project / ".runner" / "platform")
    tenant_id = stack.split(".")[0]
    assert _outputs(sandbox, tenant_id) == outputs  # the stack's outputs are those of the good deploy


def _history(sandbox, tenant_id: str) -> list[tuple]:
    history = sandbox.run("history", "--tenant", tenant_id, "--env", "staging", "--json")
    assert history.code == 0, history.stderr
    return [
        (r["operation"], r["release"], r["status"])
        for r in reversed(json.loads(history.stdout))
        if r["operation"] in ("up", "rollback")
    ]


def _assert_in_sync(sandbox, *tenants: str) -> dict:
    args = [a for t in tenants for a in ("--tenant", t)] or ["--all-tenants"]
    drift = sandbox.run("drift", *args, "--json")
    assert drift.code == 0, drift.stdout or drift.stderr
    rows = drift.by_stack()
    assert {s: t["status"] for s, t in rows.items()} == {s: "in-sync" for s in rows}, drift.stdout
    return rows


def test_on_failure_rollback_across_a_committed_broken_migration(fleet):
    (fleet.project / "stacks" / "migrations" / "003_broken.sql").write_text(BROKEN_SQL)
    c2 = fleet.commit("a broken migration")

    result = fleet.run("up", "--tenant", "shop-2", "--yes", "--on-failure", "rollback", "--json")

    assert result.code == 1, result.stderr
    up, back = [t for t in result.json["targets"] if t["stack"] == "shop-2.staging"]
    assert (up["operation"], up["status"], up["error_component"]) == ("up", "failed", "runner:local:Backend")
    assert "003_broken.sql" in up["error"]
    assert (back["operation"], back["status"]) == ("rollback", "succeeded"), back["error"]
    assert back["details"]["rollback_to"] == fleet.c1
    assert Path(back["details"]["program"]["dir"]).name.startswith(fleet.c1)  # the earlier commit's own tree (full id)
    _assert_at_release(fleet, "shop-2.staging", fleet.c1, c2)
    assert _history(fleet, "shop-2")[-3:] == [
        ("up", fleet.c1, "succeeded"),
        ("up", c2, "failed"),
        ("rollback", fleet.c1, "succeeded"),
    ]
    # The project is at c2, which no tenant runs: every tenant is in sync with its own release.
    rows = _assert_in_sync(fleet)
    assert rows["shop-1.staging"]["details"]["behind"], "the newer commit is reported as behind, not as drift"


def test_runner_rollback_across_a_committed_program_change_that_raises(fleet):
    program = fleet.project / "stacks" / "program.py"
    program.write_text(
        program.read_text().replace(
            "    t = deployment.target\n",
            "    t = deployment.target\n    raise RuntimeError('a broken program change')\n",
            1,
        )
    )
    template = fleet.project / "stacks" / "app" / "frontend" / "index.html"
    template.write_text(template.read_text() + "<!-- c2 -->\n")
    c2 = fleet.commit("a program change that raises")

    broken = fleet.run("up", "--tenant", "shop-1", "--yes", "--json")
    assert broken.code == 1
    assert "a broken program change" in broken.by_stack()["shop-1.staging"]["error"]

    back = fleet.run("rollback", "--tenant", "shop-1", "--env", "staging", "--yes", "--json")

    assert back.code == 0, back.stdout or back.stderr
    row = back.by_stack()["shop-1.staging"]
    assert (row["operation"], row["status"], row["details"]["rollback_to"]) == ("rollback", "succeeded", fleet.c1)
    _assert_at_release(fleet, "shop-1.staging", fleet.c1, c2)
    assert "<!-- c2 -->" not in (Path(fleet.good["shop-1.staging"]["site_dir"]) / "index.html").read_text()
    assert _history(fleet, "shop-1")[-3:] == [
        ("up", fleet.c1, "succeeded"),
        ("up", c2, "failed"),
        ("rollback", fleet.c1, "succeeded"),
    ]
    _assert_in_sync(fleet, "shop-1")


def test_rollback_with_an_uncommitted_broken_migration_runs_the_committed_program(fleet):
    (fleet.project / "stacks" / "migrations" / "003_broken.sql").write_text(BROKEN_SQL)
    fleet.git("add", "-A")  # staged, not committed: the release is `<c1>-dirty`

    broken = fleet.run("up", "--tenant", "shop-3", "--yes", "--json")
    assert broken.code == 1
    assert "003_broken.sql" in broken.by_stack()["shop-3.staging"]["error"]

    back = fleet.run("rollback", "--tenant", "shop-3", "--env", "staging", "--yes", "--json")

    assert back.code == 0, back.stdout or back.stderr
    row = back.by_stack()["shop-3.staging"]
    assert (row["status"], row["details"]["rollback_to"]) == ("succeeded", fleet.c1), row["error"]
    _assert_at_release(fleet, "shop-3.staging", fleet.c1, f"{fleet.c1}-dirty")
    assert _history(fleet, "shop-3")[-1] == ("rollback", fleet.c1, "succeeded")
    _assert_in_sync(fleet, "shop-3")
