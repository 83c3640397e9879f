"""Issue #22 items 4 and 6: what a release is (the program's commit), and why
`up --skip-unchanged` skips a target or not. Git repositories here are
throwaway ones in tmp_path, never the project's."""

from __future__ import annotations

import math
import subprocess
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner import ops
from runner import report as rpt
from runner.fleet import Job
from runner.ledger import Ledger


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def project(tmp_path) -> Path:
    repo = tmp_path / "project"
    (repo / "stacks" / "migrations").mkdir(parents=True)
    (repo / "components").mkdir()
    (repo / "Pulumi.yaml").write_text("name: runner\nruntime: python\nmain: stacks/\n")
    (repo / "stacks" / "program.py").write_text("print('program')\n")
    (repo / "stacks" / "migrations" / "001_init.sql").write_text("CREATE TABLE t (id INTEGER);\n")
    (repo / "stacks" / "tenants.yaml").write_text("tenants: []\n")
    (repo / "components" / "base.py").write_text("X = 1\n")
    (repo / "README.md").write_text("# project\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "--short=12", "HEAD")


def test_a_registry_edit_is_no_new_release(project):
    release = ops.program_commit(project)
    assert release == head(project)
    (project / "stacks" / "tenants.yaml").write_text("tenants: [{id: acme}]\n")
    assert ops.program_commit(project) == release  # config, not program: same release, not -dirty


def test_a_commit_outside_the_program_keeps_the_release_and_fingerprint(project):
    release, fingerprint = ops.program_commit(project), ops.program_fingerprint(project)
    (project / "README.md").write_text("# project\n\nmore words\n")
    (project / "stacks" / "tenants.yaml").write_text("tenants: [{id: acme}]\n")
    git(project, "commit", "-q", "-am", "docs and registry only")
    assert head(project) != release
    assert ops.program_commit(project) == release
    assert ops.program_fingerprint(project) == fingerprint


def test_a_program_change_is_dirty_until_committed_then_a_new_release(project):
    release = ops.program_commit(project)
    (project / "stacks" / "program.py").write_text("print('changed')\n")
    assert ops.program_commit(project) == f"{release}-dirty"
    git(project, "commit", "-q", "-am", "program change")
    assert ops.program_commit(project) == head(project) != release


def test_an_untracked_migration_makes_the_program_dirty(project):
    (project / "stacks" / "migrations" / "002_more.sql").write_text("CREATE TABLE u (id INTEGER);\n")
    assert ops.program_commit(project).endswith("-dirty")


# --------------------------------------------------------------------------- --skip-unchanged


STACK = "acme.staging"


def job(fingerprint: str = "fp-1", **config) -> Job:
    return Job(
        "acme",
        "staging",
        STACK,
        "up",
        {"release": "r1", "app_version": "1.0.0", **config},
        {},
        config_fingerprint=fingerprint,
    )


def deploy(
    lg: Ledger,
    run_id: str,
    fingerprint: str = "fp-1",
    *,
    ago: float = 60,
    op: str = "up",
    status: str = "succeeded",
    config=None,
) -> None:
    when = rpt.now() - timedelta(seconds=ago)
    op_id = lg.record_start(
        run_id,
        "acme",
        "staging",
        STACK,
        op,
        release="r1",
        config_fingerprint=fingerprint,
        config_snapshot=config or {"release": "r1", "app_version": "1.0.0"},
        started=when,
    )
    lg.record_end(op_id, status, ended=when)


@pytest.fixture
def ledger(tmp_path):
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as lg:
        yield lg


def test_never_deployed_is_not_skipped_and_says_so(ledger):
    assert ops.skip_decision(ledger, job(), 3600) == (False, "not skipped: never deployed successfully")


def test_a_fresh_deploy_is_evidence_enough_without_a_drift_check(ledger):
    deploy(ledger, "run-1", ago=180)
    skip, why = ops.skip_decision(ledger, job(), 3600)
    assert skip, why
    assert why == "unchanged since run run-1; deployed 3 min ago"
    assert ops.unchanged_reason(ledger, job(), 3600) == why


def test_an_old_deploy_without_a_drift_check_is_not_skipped(ledger):
    deploy(ledger, "run-1", ago=7200)
    skip, why = ops.skip_decision(ledger, job(), 3600)
    assert not skip
    assert why.startswith("not skipped: deployed 2.0 h ago, older than --max-age 60 min")
    assert "no drift check since" in why


def test_a_clean_drift_check_renews_the_evidence(ledger):
    deploy(ledger, "run-1", ago=7200)
    deploy(ledger, "run-2", op="drift", status="in-sync", ago=120)
    assert ops.skip_decision(ledger, job(), 3600) == (True, "unchanged since run run-1; in sync 2 min ago")


def test_a_drift_check_that_found_drift_is_not_skipped(ledger):
    deploy(ledger, "run-1", ago=120)
    deploy(ledger, "run-2", op="drift", status="drifted", ago=60)
    assert ops.skip_decision(ledger, job(), 3600) == (
        False,
        "not skipped: the last drift check (run run-2) found it drifted",
    )


def test_a_changed_config_is_named(ledger):
    deploy(ledger, "run-1")
    skip, why = ops.skip_decision(ledger, job("fp-2", app_version="1.0.1"), 3600)
    assert not skip and why == "not skipped: config changed (app_version) since run run-1"
    skip, why = ops.skip_decision(ledger, job("fp-2", release="r2"), 3600)
    assert why == "not skipped: release r1 -> r2 since run run-1"
    skip, why = ops.skip_decision(ledger, job("fp-2"), 3600)
    assert why == "not skipped: program or secrets changed since run run-1"


def test_sync_decides_on_the_fingerprint_alone(ledger):
    deploy(ledger, "run-1", ago=10 * 86400)
    assert ops.skip_decision(ledger, job(), math.inf) == (True, "unchanged since run run-1")


# --------------------------------------------------------------------------- drift --remediate up


def fake_fleet(project_dir: Path):
    return SimpleNamespace(master="master", project_dir=project_dir)


def test_remediating_new_config_gets_its_own_release_label(ledger, project):
    deploy(ledger, "run-1", "fp-1")
    fixed = ops.remediation_job(fake_fleet(project), ledger, job("fp-2abcdef99", app_version="1.0.1"))
    assert fixed.config["release"] == "r1.remediated-fp-2abcd"
    assert fixed.config["app_version"] == "1.0.1"
    assert fixed.details["remediation_of"] == "r1"
    assert fixed.config_fingerprint not in ("fp-1", "fp-2abcdef99")
    again = ops.remediation_job(
        fake_fleet(project),
        ledger,
        Job("acme", "staging", STACK, "up", {**fixed.config}, {}, config_fingerprint="fp-3zzzzzzzz"),
    )
    assert again.config["release"] == "r1.remediated-fp-3zzzz"  # of the release, not of a remediation


def test_repairing_reality_keeps_the_deployed_label(ledger, project):
    deploy(ledger, "run-1", "fp-1")
    same = job("fp-1")
    assert ops.remediation_job(fake_fleet(project), ledger, same) is same
