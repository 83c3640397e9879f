"""`runner recover` with no selector covers the whole fleet (#22.10): it only
removes locks whose holder is provably dead and clears interrupted updates,
so it needs neither a tenant selector nor the tenants' secrets."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e


def test_recover_alone_covers_the_fleet(sandbox):
    sandbox.write_registry([tenant("alpha"), tenant("beta", secrets={"db_password": {"env": "BETA_DB_PASSWORD"}})])
    up = sandbox.run("up", "--tenant", "alpha", "--release", "r1", "--yes", "--json")
    assert up.code == 0, up.stderr

    result = sandbox.run("recover", "--json")  # no selector, BETA_DB_PASSWORD unset
    assert result.code == 0, result.stderr
    assert "select tenants" not in result.stderr
    rows = result.by_stack()
    assert set(rows) == {"alpha.staging", "beta.staging"}
    assert rows["alpha.staging"]["status"] == "succeeded"
    # never deployed: nothing to recover, and no empty stack created for it
    assert (rows["beta.staging"]["status"], rows["beta.staging"]["error"]) == (
        "skipped",
        "never deployed: nothing to recover",
    )
