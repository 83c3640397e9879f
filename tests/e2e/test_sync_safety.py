"""`runner sync` on a deployed fleet, on the real engine: a shard never
decides what is offboarded (#15.1), only registry names are pruned and an
empty registry prunes nothing (#15.2), prune is listed, confirmed and
limited (#15 blast radius), the dry run shows its plan and a two-environment
tenant is offboarded in one run (#22.7).

One fleet is deployed for the module; every test but the last leaves it as
it found it (and checks so), the last one offboards. Keep it last."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from runner.shard import shard_of
from tests.e2e.conftest import Sandbox, tenant

pytestmark = pytest.mark.e2e

FLEET = [tenant("alpha"), tenant("beta"), tenant("gamma", envs=("staging", "production"))]
TENANT_STACKS = {"alpha.staging", "beta.staging", "gamma.staging", "gamma.production"}
HANDMADE = {"scratch", "Foo.staging", "zeta.qa"}  # stacks someone made by hand in the same backend


def _pulumi(box: Sandbox, *args: str) -> str:
    """The plain pulumi CLI on the sandbox's backend, from a scratch project dir (not the repository)."""
    project = box.root / "handmade"
    project.mkdir(exist_ok=True)
    (project / "Pulumi.yaml").write_text("name: runner\nruntime: python\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
    env.update(
        PULUMI_BACKEND_URL=(box.state / "state").resolve().as_uri(),
        PULUMI_CONFIG_PASSPHRASE="scratch",
        PULUMI_HOME=str(project / ".home"),
        PULUMI_SKIP_UPDATE_CHECK="true",
    )
    proc = subprocess.run(
        [str(box.engine_bin / "pulumi"), *args, "--non-interactive"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def stacks(box: Sandbox) -> set[str]:
    return {s["name"].rsplit("/", 1)[-1] for s in json.loads(_pulumi(box, "stack", "ls", "--json"))}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, engine_bin) -> Sandbox:
    box = Sandbox(tmp_path_factory.mktemp("sync-safety"), engine_bin)
    box.write_registry(FLEET)
    deployed = box.run("up", "--all-tenants", "--yes", "--release", "r1", "--json")
    assert deployed.code == 0, deployed.stderr
    for name in sorted(HANDMADE):
        _pulumi(box, "stack", "init", name)
    assert stacks(box) == TENANT_STACKS | HANDMADE | {"shared"}
    return box


def test_sharded_sync_never_decides_what_is_offboarded(fleet):
    fleet.write_registry([t for t in FLEET if t["id"] != "beta"])  # beta left: the one real orphan
    before = stacks(fleet)
    shard = {"JOB_COMPLETION_INDEX": "1", "JOB_COMPLETION_COUNT": "2"}
    for args, env in (
        (("sync", "--prune", "--release", "r1"), shard),
        (("sync", "--prune", "--yes", "--release", "r1", "--shard", "0/2"), None),
    ):
        refused = fleet.run(*args, env=env)
        assert refused.code == 2, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "whole registry" in errors[0], refused.stderr
        assert stacks(fleet) == before, "a sharded prune destroyed stacks"

    # Without --prune a shard deploys its own targets and says so; the orphans
    # it reports come from the whole registry, not from the other shards.
    synced = fleet.run("sync", "--release", "r1", "--json", env=shard)
    assert synced.code == 0, synced.stderr
    mine = {s for s in TENANT_STACKS - {"beta.staging"} if shard_of(s, 2) == 1}
    assert set(synced.by_stack()) == mine
    notes = " ".join(synced.json["notes"])
    assert "shard 1/2" in notes and "beta.staging" in notes
    for other in TENANT_STACKS - {"beta.staging"} - mine:
        assert other not in notes, f"{other} is in the registry, not an orphan: {notes}"
    assert stacks(fleet) == before


def test_an_empty_registry_prunes_nothing(fleet):
    fleet.write_registry([])
    before = stacks(fleet)
    refused = fleet.run("sync", "--prune", "--release", "r1")
    assert refused.code == 2 and "no tenants" in refused.stderr, refused.stderr
    assert stacks(fleet) == before
    refused = fleet.run("sync", "--prune", "--yes", "--release", "r1")
    assert refused.code == 2 and "no tenants" in refused.stderr, refused.stderr
    assert stacks(fleet) == before


def test_dry_run_shows_the_plan_in_the_table(fleet):
    fleet.write_registry(
        [
            tenant("alpha", config={"domain": "alpha.example.org"}),
            tenant("gamma", envs=("staging", "production")),
            tenant("delta"),
        ]
    )
    plan = fleet.run("sync", "--release", "r1", "--dry-run")
    assert plan.code == 0, plan.stderr
    rows = {
        line.split()[1]: line for line in plan.stderr.splitlines() if line.startswith("│") and len(line.split()) > 1
    }
    assert "update" in rows["alpha.staging"], plan.stderr
    assert "create" in rows["delta.staging"], plan.stderr
    assert "in sync" in rows["gamma.staging"] and "in sync" in rows["gamma.production"], plan.stderr
    assert "offboard (needs --prune)" in rows["beta.staging"], plan.stderr
    assert "scratch" in plan.stderr  # reported as left alone
    assert stacks(fleet) == TENANT_STACKS | HANDMADE | {"shared"}


def test_prune_is_listed_confirmed_limited_and_offboards_a_two_environment_tenant_in_one_run(fleet):
    """Keep last: it offboards beta and gamma."""
    fleet.write_registry([tenant("alpha")])
    gone = {"beta.staging", "gamma.staging", "gamma.production"}
    before = stacks(fleet)

    unconfirmed = fleet.run("sync", "--prune", "--release", "r1", "--json")  # not a terminal, no --yes
    assert unconfirmed.code == 2 and "--yes" in unconfirmed.stderr, unconfirmed.stderr
    assert all(s in unconfirmed.stderr for s in gone) and unconfirmed.stdout == ""
    assert stacks(fleet) == before

    limited = fleet.run("sync", "--prune", "--yes", "--max-destroy", "2", "--release", "r1")
    assert limited.code == 2 and "--max-destroy" in limited.stderr, limited.stderr
    assert stacks(fleet) == before

    pruned = fleet.run("sync", "--prune", "--yes", "--release", "r1", "--json")
    assert pruned.code == 0, pruned.stderr
    rows = {s: (t["operation"], t["status"]) for s, t in pruned.by_stack().items()}
    assert {s: rows[s] for s in gone} == {s: ("destroy", "succeeded") for s in gone}, pruned.stdout
    assert not HANDMADE & set(rows)
    assert all(s in " ".join(pruned.json["notes"]) for s in HANDMADE)  # reported, left alone
    assert stacks(fleet) == {"shared", "alpha.staging"} | HANDMADE
    for env in ("staging", "production"):
        assert not (fleet.platform / "accounts" / "gamma" / env / "frontend").exists()
