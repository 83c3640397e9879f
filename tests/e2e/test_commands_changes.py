"""Commands and options that change a deployed fleet, run end to end on the real
engine against one small fleet of this module (deployed once). Each test changes
a tenant no earlier test touched (or redeploys), so none needs a restore, and
asserts what changed, not only exit codes (#18)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from runner import engine, recovery
from tests.e2e.conftest import PROJECT_DIR, Sandbox, tenant
from tests.e2e.test_reliability import assert_state_clean, start_pulumi_holder, write_lock

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("changes_fleet")]

IDS = ("c-1", "c-2", "c-3")


def _registry(box, **config_for) -> None:
    box.write_registry([tenant(t, config=config_for.get(t, {})) for t in IDS])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, engine_bin):
    box = Sandbox(tmp_path_factory.mktemp("changes-fleet"), engine_bin)
    _registry(box)
    up = box.run("up", "--all-tenants", "--yes", "--json", "--release", "r1")
    assert up.code == 0, up.stderr[-3000:]
    box.outputs = {s: t["outputs"] for s, t in up.by_stack().items()}
    return box


def _site(box, tid: str) -> Path:
    return Path(box.outputs[f"{tid}.staging"]["site_dir"]) / "index.html"


def _stack_doc(box, stack: str) -> dict:
    return json.loads((box.state / "state" / ".pulumi" / "stacks" / "runner" / f"{stack}.json").read_text())


def _site_state(box, tid: str) -> dict:
    resources = _stack_doc(box, f"{tid}.staging")["checkpoint"]["latest"]["resources"]
    [site] = [r for r in resources if r["urn"].endswith("::frontend-site")]
    return site["outputs"]


def _drift(box, tid: str) -> dict:
    drift = box.run("drift", "--tenant", tid, "--json")
    return drift.by_stack()[f"{tid}.staging"]


def test_refresh_accepts_an_out_of_band_change_into_the_state(fleet):
    site = _site(fleet, "c-1")
    before = _site_state(fleet, "c-1")
    site.write_text(site.read_text() + "<!-- edited by hand -->")
    assert _drift(fleet, "c-1")["status"] == "drifted"

    refreshed = fleet.run("refresh", "--tenant", "c-1", "--json")

    assert refreshed.code == 0, refreshed.stderr[-2000:]
    row = refreshed.by_stack()["c-1.staging"]
    assert (row["operation"], row["status"]) == ("refresh", "succeeded")
    assert [(s["name"], s["op"], s["keys"]) for s in row["details"]["steps"]] == [
        ("frontend-site", "update", ["content_hash"])
    ]
    after = _site_state(fleet, "c-1")
    assert after["content_hash"] != before["content_hash"], "refresh left the state as it was"
    assert "edited by hand" in site.read_text()  # refresh never touches reality
    # reality is in the state now: the code's own content is what an up would bring back
    pending = _drift(fleet, "c-1")["details"]["pending"]
    assert "content_hash" in next(p["keys"] for p in pending if p["name"] == "frontend-site"), pending


def test_drift_remediate_refresh_accepts_reality_then_checks_again(fleet):
    site = _site(fleet, "c-2")
    before = _site_state(fleet, "c-2")
    site.write_text(site.read_text() + "<!-- edited by hand -->")

    fixed = fleet.run("drift", "--tenant", "c-2", "--remediate", "refresh", "--json")

    rows = [(t["operation"], t["status"]) for t in fixed.json["targets"]]
    assert rows[0] == ("drift", "drifted") and ("refresh", "succeeded") in rows, rows
    assert _site_state(fleet, "c-2") != before
    assert "edited by hand" in site.read_text()  # refresh never touches reality
    assert [
        (s["name"], s["keys"])
        for t in fixed.json["targets"]
        if t["operation"] == "refresh"
        for s in t["details"]["steps"]
    ] == [("frontend-site", ["content_hash"])]


def test_rollback_to_a_named_release(fleet):
    _registry(fleet, **{"c-3": {"app_version": "2.0.0"}})
    assert fleet.run("up", "--tenant", "c-3", "--release", "r2", "--yes").code == 0
    assert "2.0.0" in _site(fleet, "c-3").read_text()
    assert fleet.run("up", "--tenant", "c-3", "--release", "r3", "--yes").code == 0

    back = fleet.run("rollback", "--tenant", "c-3", "--env", "staging", "--to", "r1", "--yes", "--json")

    assert back.code == 0, back.stderr[-2000:]
    row = back.by_stack()["c-3.staging"]
    assert (row["operation"], row["status"], row["details"]["rollback_to"]) == ("rollback", "succeeded", "r1")
    assert row["outputs"]["release"] == "r1"
    assert "2.0.0" not in _site(fleet, "c-3").read_text() and "1.0.0" in _site(fleet, "c-3").read_text()
    history = json.loads(fleet.run("history", "--tenant", "c-3", "--env", "staging", "--json").stdout)
    assert (history[0]["operation"], history[0]["release"]) == ("rollback", "r1")
    _registry(fleet)  # the registry as deployed again (no engine call)


def test_recover_removes_a_dead_holders_lock_and_clears_pending_operations(fleet):
    stack = "c-3.staging"
    path = fleet.state / "state" / ".pulumi" / "stacks" / "runner" / f"{stack}.json"
    doc = json.loads(path.read_text())
    latest = doc["checkpoint"]["latest"]
    [site] = [r for r in latest["resources"] if r["urn"].endswith("::frontend-site")]
    latest["pending_operations"] = [{"resource": site, "type": "updating"}]
    path.write_text(json.dumps(doc))
    holder = start_pulumi_holder()  # an engine of a runner that then died, as the worker recorded it
    lock = write_lock(fleet, stack, holder.pid)
    recovery.write_holder_record(
        recovery.holders_dir(fleet.state / "work"), stack, {holder.pid: recovery.start_time(holder.pid)}
    )
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    recovered = fleet.run("recover", "--tenant", "c-3", "--json")

    assert recovered.code == 0, recovered.stderr[-2000:]
    row = recovered.by_stack()[stack]
    assert row["status"] == "succeeded", row["error"]
    assert [r for r in row["details"]["recovered"] if r.startswith(f"lock of dead pid {holder.pid} ")], row["details"]
    assert {(s["urn"].rsplit("::", 1)[1], s["op"]) for s in row["details"]["steps"]} == {
        ("frontend-site", "cleared pending updating")
    }, row["details"]["steps"]
    assert not lock.exists()
    assert_state_clean(fleet, [stack])


def test_on_failure_stop_then_rerun_failed(fleet):
    broken = {"migrations_dir": str(fleet.broken_migrations()), "app_version": "2.0.0"}
    _registry(fleet, **{"c-2": broken})

    stopped = fleet.run(
        "up", "--all-tenants", "--release", "r4", "--on-failure", "stop", "--concurrency", "1", "--yes", "--json"
    )

    assert stopped.code == 1
    assert {s: t["status"] for s, t in stopped.by_stack().items()} == {
        "c-1.staging": "succeeded",
        "c-2.staging": "failed",
        "c-3.staging": "not-started",
    }
    assert "900_broken.sql" in stopped.by_stack()["c-2.staging"]["error"]

    _registry(fleet)  # fixed
    rerun = fleet.run("up", "--rerun-failed", "--release", "r4", "--yes", "--json")

    assert rerun.code == 0, rerun.stderr[-2000:]
    assert {s: t["status"] for s, t in rerun.by_stack().items()} == {
        "c-2.staging": "succeeded",
        "c-3.staging": "succeeded",
    }


def test_an_untenanted_deploy_to_an_environment(fleet):
    up = fleet.run("up", "--untenanted", "--env", "staging", "--release", "r1", "--yes", "--json")
    assert up.code == 0, up.stderr[-2000:]
    row = up.by_stack()["staging"]
    assert (row["tenant"], row["environment"], row["status"]) == (None, "staging", "succeeded")
    assert row["outputs"]["release"] == "r1"
    assert Path(row["outputs"]["site_dir"]).is_dir()


def test_sync_prune_purge_deletes_the_offboarded_tenants_database(fleet):
    db = Path(fleet.outputs["c-3.staging"]["database_path"])
    assert db.is_file()
    fleet.write_registry([tenant("c-1"), tenant("c-2")])

    pruned = fleet.run("sync", "--release", "r1", "--prune", "--purge", "--yes", "--json")

    assert pruned.code == 0, pruned.stderr[-2000:]
    rows = {s: (t["operation"], t["status"]) for s, t in pruned.by_stack().items()}
    assert rows["c-3.staging"] == ("destroy", "succeeded")
    assert not db.exists(), "--purge kept the offboarded tenant's database"
    assert not (fleet.platform / "accounts" / "c-3" / "staging" / "frontend").exists()
    assert Path(fleet.outputs["c-1.staging"]["database_path"]).is_file()
    listed = fleet.run("sync", "--release", "r1", "--dry-run", "--json")
    assert "c-3.staging" not in listed.by_stack()


def test_destroy_remove_deletes_the_stack_and_keeps_the_database(fleet):
    db = Path(fleet.outputs["c-2.staging"]["database_path"])

    destroyed = fleet.run("destroy", "--tenant", "c-2", "--env", "staging", "--remove", "--yes", "--json")

    assert destroyed.code == 0, destroyed.stderr[-2000:]
    row = destroyed.by_stack()["c-2.staging"]
    assert (row["operation"], row["status"]) == ("destroy", "succeeded"), row["error"]
    assert db.is_file(), "destroy without purge deleted the tenant database"
    assert not (fleet.platform / "accounts" / "c-2" / "staging" / "frontend").exists()
    settings = engine.EngineSettings(
        bin_dir=fleet.engine_bin,
        project_dir=PROJECT_DIR,
        backend_url=(fleet.state / "state").resolve().as_uri(),
        work_root=fleet.state / "work",
    )
    assert "c-2.staging" not in engine.list_stacks(settings) and "c-1.staging" in engine.list_stacks(settings)
