"""Drift detection and remediation across the fleet, with the real engine."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e


def _checksums(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_drift_reports_exactly_what_changed_and_remediation_fixes_it(sandbox):
    tenants = [tenant(f"shop-{i}", config={"domain": f"shop-{i}.example.com"}) for i in range(1, 6)]
    sandbox.write_registry(tenants)
    deployed = sandbox.run("up", "--all-tenants", "--yes", "--json", "--concurrency", "2")
    assert deployed.code == 0, deployed.stderr
    targets = deployed.by_stack()

    # 1: someone edits a site file; 2: someone deletes the database; 3: the registry changes.
    site = Path(targets["shop-1.staging"]["outputs"]["site_dir"]) / "index.html"
    site.write_text(site.read_text() + "<!-- edited by hand -->")
    Path(targets["shop-2.staging"]["outputs"]["database_path"]).unlink()
    tenants[2]["config"] = {"domain": "shop-3.example.org"}
    sandbox.write_registry(tenants)
    state_before = _checksums(sandbox.state / "state")

    drift = sandbox.run("drift", "--all-tenants", "--json", "--concurrency", "2")

    assert drift.code == 3, drift.stderr
    assert _checksums(sandbox.state / "state") == state_before  # the check wrote no state
    found = drift.by_stack()
    assert {s: t["status"] for s, t in found.items()} == {
        "shop-1.staging": "drifted",
        "shop-2.staging": "drifted",
        "shop-3.staging": "pending",
        "shop-4.staging": "in-sync",
        "shop-5.staging": "in-sync",
    }
    assert [d["name"] for d in found["shop-1.staging"]["details"]["drift"]] == ["frontend-site"]
    assert [d["name"] for d in found["shop-2.staging"]["details"]["drift"]] == ["backend-db"]
    pending = found["shop-3.staging"]["details"]["pending"]
    assert pending and all(p["op"] == "update" for p in pending)
    assert "frontend-site" in found["shop-1.staging"]["summary"]

    fixed = sandbox.run("drift", "--all-tenants", "--remediate", "up", "--json", "--concurrency", "2")
    assert fixed.code == 0, fixed.stderr
    rows = fixed.json["targets"]
    ups = {t["stack"]: t["status"] for t in rows if t["operation"] == "up"}
    assert ups == {"shop-1.staging": "succeeded", "shop-2.staging": "succeeded", "shop-3.staging": "succeeded"}
    after = [t for t in rows if t["operation"] == "drift" and t["details"].get("after")]
    assert {t["stack"]: t["status"] for t in after} == {s: "in-sync" for s in ups}
    assert "edited by hand" not in site.read_text()
    assert Path(targets["shop-2.staging"]["outputs"]["database_path"]).exists()

    again = sandbox.run("drift", "--all-tenants", "--json")
    assert again.code == 0, json.dumps(again.json["counts"])
    assert again.json["counts"] == {"total": 5, "in-sync": 5}


# --------------------------------------------------------------------------- a staged rollout
# Drift is a difference of a tenant's OWN resources from reality or from the code at its deployed
# release. A release rolled out tenant by tenant changes the `shared` stack that every tenant reads:
# that is not drift of the tenants that have not received it yet (they are `behind`).


@pytest.fixture(scope="module")
def rollout(tmp_path_factory, engine_bin):
    """Four tenants at release r1, then r2 deployed to shop-1 only (the shared stack is at r2)."""
    from tests.e2e.conftest import Sandbox

    sandbox = Sandbox(tmp_path_factory.mktemp("rollout"), engine_bin)
    sandbox.tenants = [tenant(f"shop-{i}", config={"domain": f"shop-{i}.example.com"}) for i in range(1, 5)]
    sandbox.write_registry(sandbox.tenants)
    first = sandbox.run("up", "--all-tenants", "--yes", "--release", "r1", "--json", "--concurrency", "2")
    assert first.code == 0, first.stderr
    sandbox.deployed = first.by_stack()
    canary = sandbox.run("up", "--tenant", "shop-1", "--yes", "--release", "r2", "--json")
    assert canary.code == 0, canary.stderr
    return sandbox


def test_a_staged_rollout_is_not_drift_and_findings_name_their_properties(rollout):
    # out of band: a site file edited by hand on shop-2; a registry change for shop-3
    site = Path(rollout.deployed["shop-2.staging"]["outputs"]["site_dir"]) / "index.html"
    original = site.read_text()
    tenants = [dict(t) for t in rollout.tenants]
    tenants[2] = {**tenants[2], "config": {"domain": "shop-3.example.org"}}
    rollout.write_registry(tenants)
    site.write_text(original + "<!-- edited by hand -->")
    try:
        drift = rollout.run("drift", "--all-tenants", "--json", "--concurrency", "2")
    finally:
        site.write_text(original)
        rollout.write_registry(rollout.tenants)

    assert drift.code == 3, drift.stderr
    found = drift.by_stack()
    assert {s: t["status"] for s, t in found.items()} == {
        "shop-1.staging": "in-sync",
        "shop-2.staging": "drifted",
        "shop-3.staging": "pending",
        "shop-4.staging": "in-sync",
    }
    # r2 reached only shop-1; the others read the shared stack at r2: reported, not drift
    for stack in ("shop-2.staging", "shop-3.staging", "shop-4.staging"):
        behind = found[stack]["details"]["behind"]
        assert [(b["name"], b["keys"]) for b in behind] == [("shared", ["release"])], behind
    assert "behind" not in found["shop-1.staging"]["details"]
    assert any("behind" in note for note in drift.json["notes"])
    # the drifted resource, with the properties that differ
    assert [(d["name"], d["keys"]) for d in found["shop-2.staging"]["details"]["drift"]] == [
        ("frontend-site", ["content_hash"])
    ]
    assert "frontend-site [content_hash]" in found["shop-2.staging"]["summary"]
    # pending: the tenant's resources whose inputs change, not the provider's `default` config update
    pending = found["shop-3.staging"]["details"]["pending"]
    assert pending and all(
        p["keys"] and not p["urn"].split("::")[2].startswith("pulumi:providers:") for p in pending
    ), pending
    assert "frontend-site" in [p["name"] for p in pending]
    assert "default" not in [p["name"] for p in pending]
    # the summary column holds findings, not only errors
    assert "findings" in drift.stderr and "┃ error ┃" not in drift.stderr

    again = rollout.run("drift", "--all-tenants", "--json", "--concurrency", "2")
    assert again.code == 0, again.stdout
    assert again.json["counts"] == {"total": 4, "in-sync": 4}
