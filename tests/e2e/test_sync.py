"""Onboarding and offboarding: `runner sync` reconciles the registry with the stacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e


def test_sync_adds_updates_and_offboards_tenants(sandbox):
    sandbox.write_registry([tenant("alpha"), tenant("beta")])
    first = sandbox.run("sync", "--release", "r1", "--json")
    assert first.code == 0, first.stderr
    assert {s: t["status"] for s, t in first.by_stack().items()} == {
        "alpha.staging": "succeeded",
        "beta.staging": "succeeded",
    }
    beta_db = Path(first.by_stack()["beta.staging"]["outputs"]["database_path"])

    # gamma arrives, alpha changes, beta leaves.
    sandbox.write_registry([tenant("alpha", config={"domain": "alpha.example.org"}), tenant("gamma")])
    plan = sandbox.run("sync", "--release", "r1", "--dry-run", "--json")
    assert plan.code == 0
    assert {s: t["details"]["plan"] for s, t in plan.by_stack().items()} == {
        "alpha.staging": "update",
        "gamma.staging": "create",
        "beta.staging": "offboard (needs --prune)",
    }
    assert not (sandbox.platform / "accounts" / "gamma").exists()  # the dry run changed nothing

    without_prune = sandbox.run("sync", "--release", "r1", "--json")
    assert without_prune.code == 0
    assert {s: (t["operation"], t["status"]) for s, t in without_prune.by_stack().items()} == {
        "alpha.staging": ("up", "succeeded"),
        "gamma.staging": ("up", "succeeded"),
    }
    assert any("beta.staging" in n for n in without_prune.json["notes"])

    pruned = sandbox.run("sync", "--release", "r1", "--prune", "--yes", "--json")
    assert pruned.code == 0, pruned.stderr
    rows = {s: (t["operation"], t["status"]) for s, t in pruned.by_stack().items()}
    assert rows["beta.staging"] == ("destroy", "succeeded")
    assert rows["alpha.staging"] == ("up", "skipped") and rows["gamma.staging"] == ("up", "skipped")
    assert beta_db.exists()  # protected data is retained unless --purge
    assert not (sandbox.platform / "accounts" / "beta" / "staging" / "frontend").exists()
    listed = sandbox.run("sync", "--release", "r1", "--dry-run", "--json")
    assert "beta.staging" not in listed.by_stack()  # the stack itself was removed
