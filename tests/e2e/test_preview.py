"""`runner preview` on a fleet that was never deployed, with the real engine."""

from __future__ import annotations

import pytest

from runner import engine
from tests.e2e.conftest import PROJECT_DIR, tenant

pytestmark = pytest.mark.e2e


def _stacks(sandbox, engine_bin) -> list[str]:
    """The stacks in the sandbox's backend, as the engine lists them."""
    settings = engine.EngineSettings(
        bin_dir=engine_bin,
        project_dir=PROJECT_DIR,
        backend_url=(sandbox.state / "state").resolve().as_uri(),
        work_root=sandbox.state / "work",
    )
    return engine.list_stacks(settings)


def test_preview_of_a_new_fleet_plans_every_target_and_leaves_no_stack(sandbox, engine_bin):
    sandbox.write_registry([tenant("shop-1", envs=("staging", "production")), tenant("shop-2")])

    preview = sandbox.run("preview", "--all-tenants", "--detailed-exitcode", "--json")

    assert preview.code == 3, preview.stdout or preview.stderr
    rows = preview.by_stack()
    assert set(rows) == {"shop-1.staging", "shop-1.production", "shop-2.staging"}
    for stack, row in rows.items():
        assert row["status"] == "succeeded" and row["error"] is None, (stack, row["error"])
        assert row["changes"] == {"create": 9}, (stack, row["changes"])
    assert _stacks(sandbox, engine_bin) == []  # a preview creates nothing, not even empty stacks
    assert not any((sandbox.state / "program" / "stacks").glob("Pulumi.*.yaml"))

    # the fleet deploys normally afterwards; a preview of the deployed fleet plans nothing
    assert sandbox.run("up", "--all-tenants", "--yes").code == 0
    assert _stacks(sandbox, engine_bin) == ["shared", "shop-1.production", "shop-1.staging", "shop-2.staging"]
    again = sandbox.run("preview", "--all-tenants", "--detailed-exitcode", "--json")
    assert again.code == 0, again.stdout
    assert all(set(r["changes"]) <= {"same"} for r in again.json["targets"])
