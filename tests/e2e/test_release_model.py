"""Issue #22 items 4, 5 and 6 on the real engine: releases that mean something,
per-target logs, and why `--skip-unchanged` skipped a target or not.

Commits happen only in a throwaway copy of the project (a git repository in a
temp dir holding the work tree's tracked files), never in the project itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from runner.ledger import Ledger
from tests.e2e.conftest import PROJECT_DIR, Result, Sandbox, tenant

pytestmark = pytest.mark.e2e

SENTINEL = "s3ntinel-Secret-value-7d1e"


def ledger_rows(sandbox: Sandbox, run_id: str):
    with Ledger(f"sqlite:///{sandbox.state / 'ledger.db'}") as lg:
        return lg.run_operations(run_id)


# --------------------------------------------------------------------------- one fleet, deployed once


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, engine_bin):
    """shop-1 (staging, production) with a secret, shop-2 (staging), shop-3 (staging, broken migration)."""
    box = Sandbox(tmp_path_factory.mktemp("release-fleet"), engine_bin)
    broken = box.broken_migrations()
    box.write_registry(
        [
            tenant("shop-1", ("staging", "production"), secrets={"db_password": {"env": "SHOP_1_DB_PASSWORD"}}),
            tenant("shop-2"),
            tenant("shop-3", config={"migrations_dir": str(broken)}),
        ]
    )
    first = box.run(
        "up",
        "--all-tenants",
        "--yes",
        "--json",
        "--release",
        "v1",
        "--concurrency",
        "2",
        env={"SHOP_1_DB_PASSWORD": SENTINEL},
    )
    assert first.code == 1, first.stderr
    statuses = {s: t["status"] for s, t in first.by_stack().items()}
    assert statuses == {
        "shop-1.staging": "succeeded",
        "shop-1.production": "succeeded",
        "shop-2.staging": "succeeded",
        "shop-3.staging": "failed",
    }, first.stderr
    return box, first


def test_a_failed_targets_log_holds_the_engine_error_and_no_secret(fleet):
    box, first = fleet
    failed = first.by_stack()["shop-3.staging"]
    log = Path(failed["details"]["log"])
    assert log.parent == box.state / "logs" / first.json["run_id"]
    text = log.read_text()
    assert "900_broken.sql" in text and "syntax error" in text  # the engine's diagnostic, in full
    assert f"(log: {log})" in first.stderr  # the failure's line names the file
    ok = Path(first.by_stack()["shop-1.staging"]["details"]["log"]).read_text()
    assert "[create]" in ok and "backend-db" in ok  # resource steps of a good target too
    for path in (box.state / "logs").rglob("*.log"):
        assert SENTINEL not in path.read_text(), path


def test_skip_unchanged_says_why_it_skips_or_not(fleet):
    box, first = fleet
    run_id = first.json["run_id"]
    env = {"SHOP_1_DB_PASSWORD": SENTINEL}
    result = box.run(
        "up",
        "--tenant",
        "shop-1",
        "--tenant",
        "shop-3",
        "--env",
        "staging",
        "--release",
        "v1",
        "--skip-unchanged",
        "--yes",
        "--json",
        env=env,
    )
    rows = result.by_stack()
    assert rows["shop-1.staging"]["status"] == "skipped", result.stderr
    why = rows["shop-1.staging"]["details"]["skip_unchanged"]
    assert why.startswith(f"skipped: unchanged since run {run_id}; deployed ") and why.endswith(" ago")
    assert f"shop-1.staging: {why}" in result.stderr
    # shop-3 failed last time: it runs again, and says why
    assert rows["shop-3.staging"]["status"] == "failed"
    assert rows["shop-3.staging"]["details"]["skip_unchanged"] == "not skipped: never deployed successfully"
    assert "shop-3.staging: not skipped: never deployed successfully" in result.stderr

    # With --max-age 0 the deploy is too old to stand for a drift check; a clean drift check renews it.
    stale = box.run(
        "up", "--tenant", "shop-2", "--release", "v1", "--skip-unchanged", "--max-age", "0", "--yes", "--json"
    )
    assert stale.code == 0, stale.stderr
    row = stale.by_stack()["shop-2.staging"]
    assert row["status"] == "succeeded"
    assert row["details"]["skip_unchanged"].startswith("not skipped: deployed ")
    assert "older than --max-age" in row["details"]["skip_unchanged"]
    drift = box.run("drift", "--tenant", "shop-2", "--json")
    assert drift.code == 0, drift.stderr
    fresh = box.run("up", "--tenant", "shop-2", "--release", "v1", "--skip-unchanged", "--yes", "--json")
    assert fresh.by_stack()["shop-2.staging"]["details"]["skip_unchanged"].startswith(
        f"skipped: unchanged since run {stale.json['run_id']}; in sync "
    )


def test_a_run_whose_every_target_is_blocked_leaves_shared_alone(fleet):
    box, _ = fleet
    result = box.run(
        "up",
        "--tenant",
        "shop-1",
        "--env",
        "production",
        "--release",
        "v2",
        "--yes",
        "--json",
        env={"SHOP_1_DB_PASSWORD": SENTINEL},
    )
    assert result.code == 1
    assert result.by_stack()["shop-1.production"]["status"] == "blocked"
    stacks = {row.stack for row in ledger_rows(box, result.json["run_id"])}
    assert stacks == {"shop-1.production"}  # no `shared` up


# --------------------------------------------------------------------------- a project with commits


class Project:
    """A throwaway git copy of the project; the CLI runs from it (its runner, its program)."""

    def __init__(self, root: Path, engine_bin: Path):
        self.repo = root / "project"
        self.box = Sandbox(root, engine_bin)
        self.box.registry_path = self.repo / "stacks" / "tenants.yaml"
        files = subprocess.run(
            ["git", "ls-files", "-z"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
        ).stdout.split("\0")
        for name in filter(None, files):
            source = PROJECT_DIR / name
            if source.is_file():
                (self.repo / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, self.repo / name)
        self.git("init", "-q")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "the project")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=self.repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def run(self, *args: str) -> Result:
        env = self.box.env(PYTHONPATH=str(self.repo))
        proc = subprocess.run(
            [sys.executable, "-c", "from runner.cli import main; main()", *args],
            capture_output=True,
            text=True,
            cwd=self.repo,
            env=env,
            timeout=900,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def edit_registry(self, tenant_id: str, **config) -> None:
        yaml = YAML()
        doc = yaml.load(self.box.registry_path)
        for t in doc["tenants"]:
            if t["id"] == tenant_id:
                t["config"] = {**(t.get("config") or {}), **config}
        with open(self.box.registry_path, "w") as handle:
            yaml.dump(doc, handle)


def test_registry_edits_and_commits_outside_the_program_are_no_new_release(tmp_path, engine_bin):
    project = Project(tmp_path, engine_bin)
    release = project.git("rev-parse", "--short=12", "HEAD")
    project.box.write_registry([tenant("t-1", ("staging", "production")), tenant("t-2", ("production",))])
    project.git("add", "-A")
    project.git("commit", "-q", "-m", "our tenants")  # a commit that changes the registry only

    first = project.run("up", "--all-tenants", "--yes", "--json")
    assert first.code == 0, first.stderr
    assert first.json["release"] == release  # the program's commit, not HEAD's

    # An ordinary config change (uncommitted registry edit) to a production-only tenant: same
    # release, so the lifecycle gates let it through; nothing else is blocked or redeployed.
    project.edit_registry("t-2", app_version="1.0.1")
    change = project.run("up", "--tenant", "t-2", "--yes", "--json")
    assert change.code == 0, change.stderr
    row = change.by_stack()["t-2.production"]
    assert row["status"] == "succeeded" and row["changes"].get("update"), row
    assert change.json["release"] == release

    # A commit of the registry and README only: every target is in sync, none planned as an update.
    (project.repo / "README.md").write_text((project.repo / "README.md").read_text() + "\nA new line.\n")
    project.git("commit", "-q", "-am", "docs and registry")
    plan = project.run("sync", "--dry-run", "--json")
    assert plan.code == 0, plan.stderr
    assert {s: t["details"]["plan"] for s, t in plan.by_stack().items()} == {
        "t-1.staging": "in sync",
        "t-1.production": "in sync",
        "t-2.production": "in sync",
    }

    # drift --remediate up of new config records what it deployed, under a label of its own.
    project.edit_registry("t-2", app_version="1.0.2")
    fixed = project.run("drift", "--tenant", "t-2", "--remediate", "up", "--json")
    assert fixed.code == 0, fixed.stderr
    history = json.loads(project.run("history", "--tenant", "t-2", "--env", "production", "--json").stdout)
    newest = next(r for r in history if r["operation"] == "up")
    assert newest["status"] == "succeeded"
    assert newest["release"].startswith(f"{release}.remediated-")
    assert newest["config_snapshot"]["app_version"] == "1.0.2"
    assert newest["config_snapshot"]["release"] == newest["release"]
    # the release's own rows still hold only committed config: a rollback to it deploys that
    labelled = [r for r in history if r["release"] == release and r["operation"] == "up" and r["status"] == "succeeded"]
    assert labelled and labelled[0]["config_snapshot"]["app_version"] == "1.0.1"
