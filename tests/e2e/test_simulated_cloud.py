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
    redeploy = sandbox.run("up", "--all-tenants", "--yes", "--json", "--concurrency", "auto")
    assert redeploy.code == 0, redeploy.stderr
    assert set(redeploy.by_stack()["shop-1.staging"]["changes"]) == {"same"}, redeploy.by_stack()["shop-1.staging"]
    # --concurrency auto: targets that wait on a (simulated) cloud API may run above the cores,
    # bounded by the number of targets (one here); the report says what it chose and why
    auto = [n for n in redeploy.json["notes"] if n.startswith("--concurrency auto: ")]
    assert auto and auto[0].startswith("--concurrency auto: 1 (") and "the targets wait on a cloud API" in auto[0], auto

    # Every call throttled: a no-change up makes no provider call and succeeds
    # (and records the setting); a drift check reads every resource and fails
    # with the throttling error.
    sandbox.write_registry([tenant("shop-1")], defaults={"simulated_throttle_rate": "1"})
    redeploy = sandbox.run("up", "--all-tenants", "--yes", "--json")
    assert redeploy.code == 0, redeploy.stderr
    # Throttling is transient: retried (--retries) with backoff, each attempt in the report and the ledger.
    drift = sandbox.run("drift", "--all-tenants", "--json", "--retries", "1")
    assert drift.code == 1, drift.stdout + drift.stderr
    row = drift.by_stack()["shop-1.staging"]
    assert row["status"] == "error" and "ThrottlingException: Rate exceeded (simulated)" in row["error"], row
    assert row["attempts"] == 2, row
    tries = row["details"]["attempts"]
    assert len(tries) == 2 and all("ThrottlingException" in t["error"] for t in tries), tries
    assert tries[0]["ended"] <= tries[1]["started"], tries  # one after the other, never overlapping
    history = sandbox.run("history", "--tenant", "shop-1", "--env", "staging", "--json")
    drift_rows = [r for r in history.json if r["operation"] == "drift" and r["run_id"] == drift.json["run_id"]]
    assert [r["status"] for r in drift_rows] == ["error", "error"], drift_rows  # one ledger row per attempt
    once = sandbox.run("drift", "--all-tenants", "--json", "--retries", "0")
    assert once.code == 1 and once.by_stack()["shop-1.staging"]["attempts"] == 1, once.stdout

    # Off again. A refresh configures the providers as the last up recorded
    # them (the engine's rule for every provider), so the up comes first.
    sandbox.write_registry([tenant("shop-1")])
    assert sandbox.run("up", "--all-tenants", "--yes").code == 0
    drift = sandbox.run("drift", "--all-tenants", "--json")
    assert drift.code == 0 and drift.by_stack()["shop-1.staging"]["status"] == "in-sync", drift.stdout
