"""The tenant-aware lifecycle story (Testing -> Staging -> Production), step by step."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e

ENVIRONMENTS = [{"name": "testing"}, {"name": "staging"}, {"name": "production", "require_tenant": True}]


def test_a_release_is_promoted_tenant_by_tenant(sandbox):
    sandbox.write_registry(
        [
            tenant("customer-1", ("staging", "production")),
            tenant("customer-2", ("staging", "production")),
            tenant("customer-3", ("production",)),
            tenant("internal-qa", ("testing",)),
        ],
        environments=ENVIRONMENTS,
    )

    def up(*args):
        result = sandbox.run("up", "--yes", "--json", "--release", "0.0.1", *args)
        return result, {s: (t["status"], t["error"]) for s, t in result.by_stack().items()}

    # Step 1: nothing has reached Staging yet; only the first environment is open.
    result, rows = up("--tenant", "customer-1", "--env", "staging")
    assert result.code == 1
    assert rows["customer-1.staging"][0] == "blocked"
    assert "has not reached staging" in rows["customer-1.staging"][1]

    # Step 2: the internal test tenant deploys to Testing: the phase moves to Staging.
    result, rows = up("--tenant", "internal-qa")
    assert result.code == 0 and rows == {"internal-qa.testing": ("succeeded", None)}

    # Step 3: Customer-1 to Staging. Customer-2 cannot skip Staging; Customer-3 (Production only) must
    # wait until the release has been deployed to Staging by someone.
    result, rows = up("--tenant", "customer-2", "--tenant", "customer-3", "--env", "production")
    assert rows["customer-2.production"][0] == "blocked" and rows["customer-3.production"][0] == "blocked"
    assert "must deploy release 0.0.1 to staging first" in rows["customer-2.production"][1]
    assert "has not reached production" in rows["customer-3.production"][1]
    result, rows = up("--tenant", "customer-1", "--env", "staging")
    assert result.code == 0

    # Step 4: any tenant in Staging opens Production: Customer-1 and Customer-3 may go,
    # Customer-2 still has to pass through Staging.
    result, rows = up(
        "--tenant", "customer-1", "--tenant", "customer-2", "--tenant", "customer-3", "--env", "production"
    )
    assert result.code == 1
    assert rows["customer-1.production"] == ("succeeded", None)
    assert rows["customer-3.production"] == ("succeeded", None)
    assert rows["customer-2.production"][0] == "blocked"

    # Step 5: one run over everything deploys environments in promotion order, so Customer-2 goes to
    # Staging first and then to Production.
    result, rows = up("--all-tenants")
    assert result.code == 0, rows
    order = [t["stack"] for t in result.json["targets"]]
    assert order.index("customer-2.staging") < order.index("customer-2.production")

    # Untenanted deployments: refused where the environment requires a tenant; --ignore-lifecycle is recorded.
    refused = sandbox.run("up", "--untenanted", "--env", "production", "--yes")
    assert refused.code == 2 and "requires a tenant" in refused.stderr
    forced = sandbox.run("up", "--tenant", "customer-3", "--release", "0.0.2", "--ignore-lifecycle", "--yes", "--json")
    assert forced.code == 0
    assert forced.by_stack()["customer-3.production"]["details"]["ignore_lifecycle"] is True
