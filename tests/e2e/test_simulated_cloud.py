"""The local platform's simulated cloud API (simulated_latency_ms,
simulated_throttle_rate, #17), with the real engine: the settings reach the
providers from the stack config and never show as a change."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e


def test_toggling_the_simulation_changes_nothing_and_reaches_the_providers(sandbox):
    sandbox.write_registry([tenant("shop-1")])
    deployed = sandbox.run("up", "--all-tenants", "--yes", "--json")
    assert deployed.code == 0, deployed.stderr

    # Latency on: no resource changes, nothing drifted or pending.
    sandbox.write_registry([tenant("shop-1")], defaults={"simulated_latency_ms": 200})
    drift = sandbox.run("drift", "--all-tenants", "--json")
    assert drift.code == 0, drift.stdout + drift.stderr
    assert drift.by_stack()["shop-1.staging"]["status"] == "in-sync"
    redeploy = sandbox.run("up", "--all-tenants", "--yes", "--json")
    assert redeploy.code == 0, redeploy.stderr
    assert set(redeploy.by_stack()["shop-1.staging"]["changes"]) == {"same"}, redeploy.by_stack()["shop-1.staging"]

    # Every call throttled: a no-change up makes no provider call and succeeds
    # (and records the setting); a drift check reads every resource and fails
    # with the throttling error.
    sandbox.write_registry([tenant("shop-1")], defaults={"simulated_throttle_rate": "1"})
    redeploy = sandbox.run("up", "--all-tenants", "--yes", "--json")
    assert redeploy.code == 0, redeploy.stderr
    drift = sandbox.run("drift", "--all-tenants", "--json")
    assert drift.code == 1, drift.stdout + drift.stderr
    row = drift.by_stack()["shop-1.staging"]
    assert row["status"] == "error" and "ThrottlingException: Rate exceeded (simulated)" in row["error"], row

    # Off again. A refresh configures the providers as the last up recorded
    # them (the engine's rule for every provider), so the up comes first.
    sandbox.write_registry([tenant("shop-1")])
    assert sandbox.run("up", "--all-tenants", "--yes").code == 0
    drift = sandbox.run("drift", "--all-tenants", "--json")
    assert drift.code == 0 and drift.by_stack()["shop-1.staging"]["status"] == "in-sync", drift.stdout
