"""Drift detection and remediation across the fleet, with the real engine."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


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
        "shop-1.staging": "drifted", "shop-2.staging": "drifted", "shop-3.staging": "pending",
        "shop-4.staging": "in-sync", "shop-5.staging": "in-sync",
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
