"""Progressive waves across tenants with health gates, with the real engine."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e

ROLLOUT = {
    "waves": [{"name": "canary", "tags": {"tier": "canary"}}, {"name": "early", "max": "25%"}, {"name": "rest"}],
    "failure_tolerance": 0,
}


def _tenants(**config_for):
    tenants = [tenant("canary-1", tags={"tier": "canary"})] + [tenant(f"shop-{i}") for i in range(1, 9)]
    for t in tenants:
        if t["id"] in config_for:
            t["config"] = config_for[t["id"]]
    return tenants


def test_waves_run_in_order_and_halt_on_a_broken_canary(sandbox):
    sandbox.write_registry(_tenants(), rollout=ROLLOUT)
    good = sandbox.run("up", "--all-tenants", "--yes", "--json", "--release", "r1", "--concurrency", "2")
    assert good.code == 0, good.stderr
    waves = good.json["waves"]
    assert [(w["wave"], w["targets"]) for w in waves] == [("canary", 1), ("early", 3), ("rest", 5)]
    for earlier, later in zip(waves, waves[1:], strict=False):
        assert datetime.fromisoformat(later["started"]) >= datetime.fromisoformat(earlier["ended"])
    assert good.by_stack()["canary-1.staging"]["details"]["wave"] == "canary"

    sandbox.write_registry(
        _tenants(**{"canary-1": {"migrations_dir": str(sandbox.broken_migrations()), "app_version": "2.0.0"}}),
        rollout=ROLLOUT,
    )
    bad = sandbox.run(
        "up", "--all-tenants", "--yes", "--json", "--release", "r2", "--on-failure", "rollback", "--concurrency", "2"
    )
    assert bad.code == 1
    rows = [(t["stack"], t["operation"], t["status"]) for t in bad.json["targets"]]
    assert rows[:2] == [("canary-1.staging", "up", "failed"), ("canary-1.staging", "rollback", "succeeded")]
    assert sorted(s for s, _, status in rows if status == "not-started") == [f"shop-{i}.staging" for i in range(1, 9)]
    assert any("rollout halted after wave canary" in n for n in bad.json["notes"])


def test_a_failing_health_check_in_the_early_wave_halts_before_the_last(sandbox):
    sandbox.write_registry(_tenants(**{"shop-2": {"smoke_text": "text the site never shows"}}), rollout=ROLLOUT)
    result = sandbox.run("up", "--all-tenants", "--yes", "--json", "--release", "r1", "--concurrency", "2")
    assert result.code == 1
    targets = result.by_stack()
    assert targets["shop-2.staging"]["status"] == "failed"
    assert "health check 'smoke' failed" in targets["shop-2.staging"]["error"]
    assert [w["wave"] for w in result.json["waves"]] == ["canary", "early"]
    assert [s for s, t in targets.items() if t["status"] == "not-started"] == [f"shop-{i}.staging" for i in range(4, 9)]
