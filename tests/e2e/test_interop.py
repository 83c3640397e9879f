"""The plain `pulumi` CLI on the runner's stacks, and `runner doctor` (#19).

One sandbox is deployed once for the module (a tenant with a secret, and the
shared stack); every test then drives the plain CLI with the environment
`runner env` prints, or through `runner pulumi`, against the real engine.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import PROJECT_DIR, RUNNER, Sandbox, tenant

pytestmark = pytest.mark.e2e

STACK = "plain-1.staging"
SECRET = "plain-cli-secret-value"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, engine_bin) -> Sandbox:
    sandbox = Sandbox(tmp_path_factory.mktemp("interop"), engine_bin)
    sandbox.write_registry([tenant("plain-1", secrets={"db_password": {"env": "PLAIN_1_DB_PASSWORD"}})])
    up = sandbox.run("up", "--all-tenants", "--yes", "--json", env={"PLAIN_1_DB_PASSWORD": SECRET})
    assert up.code == 0, up.stderr
    return sandbox


def shell(sandbox: Sandbox, script: str, *selector: str) -> subprocess.CompletedProcess:
    """`eval "$(runner env SELECTOR)"`, then `script`, in bash, in the directory `runner env` names."""
    where = sandbox.run("env", *selector, "--json")
    assert where.code == 0, where.stderr
    quoted = " ".join(f"'{s}'" for s in selector)
    full = f'set -e; eval "$({RUNNER} env {quoted})"; cd "$1"; {script}'
    env = sandbox.env()
    env["PATH"] = "/usr/bin:/bin"  # nothing of the engine or the virtualenv but what `runner env` adds
    return subprocess.run(
        ["bash", "-c", full, "bash", where.json["directory"]],
        capture_output=True,
        text=True,
        cwd=PROJECT_DIR,
        env=env,
        timeout=600,
    )


def test_env_prints_the_stack_passphrase_never_the_master(deployed):
    from runner.engine import stack_passphrase

    master = (deployed.state / "passphrase").read_text().strip()
    lines = deployed.run("env", "--tenant", "plain-1", "--env", "staging")
    assert lines.code == 0, lines.stderr
    doc = deployed.run("env", "--tenant", "plain-1", "--env", "staging", "--json").json
    for out in (lines.stdout, json.dumps(doc)):
        assert master not in out
    assert doc["stack"] == STACK
    assert doc["env"]["PULUMI_CONFIG_PASSPHRASE"] == stack_passphrase(master, STACK)
    assert doc["env"]["PULUMI_BACKEND_URL"] == (deployed.state / "state").resolve().as_uri()
    assert doc["env"]["PULUMI_SKIP_UPDATE_CHECK"] == "true"
    assert doc["env"]["PULUMI_STACK"] == STACK
    assert doc["path_prepend"][0] == str(deployed.engine_bin)
    # another state dir than the project's .runner: the generated program dir holds the stack config
    assert Path(doc["directory"]) == (deployed.state / "program").resolve()
    assert (Path(doc["directory"]) / "stacks" / f"Pulumi.{STACK}.yaml").exists()
    assert f"export PULUMI_CONFIG_PASSPHRASE={doc['env']['PULUMI_CONFIG_PASSPHRASE']}" in lines.stdout.splitlines()
    shared = deployed.run("env", "--stack", "shared", "--json").json
    assert shared["env"]["PULUMI_CONFIG_PASSPHRASE"] == stack_passphrase(master, "shared")


def test_plain_preview_shows_no_changes_and_stack_ls_lists_the_runners_stacks(deployed):
    preview = shell(
        deployed, f"pulumi preview --expect-no-changes -s {STACK}", "--tenant", "plain-1", "--env", "staging"
    )
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert SECRET not in preview.stdout + preview.stderr
    listing = shell(deployed, "pulumi stack ls", "--stack", "shared")
    assert listing.returncode == 0, listing.stderr
    names = {line.split()[0].rstrip("*") for line in listing.stdout.splitlines()[1:] if line.strip()}
    assert {STACK, "shared"} <= names


def test_plain_up_then_runner_drift_is_in_sync(deployed):
    up = shell(deployed, f"pulumi up --yes --skip-preview -s {STACK}", "--tenant", "plain-1", "--env", "staging")
    assert up.returncode == 0, up.stdout + up.stderr
    drift = deployed.run(
        "drift", "--tenant", "plain-1", "--env", "staging", "--json", env={"PLAIN_1_DB_PASSWORD": SECRET}
    )
    assert drift.code == 0, drift.stderr
    assert drift.by_stack()[STACK]["status"] == "in-sync"


def test_runner_pulumi_runs_the_plain_cli_and_passes_its_exit_code(deployed):
    export = deployed.run("pulumi", "--tenant", "plain-1", "--env", "staging", "--", "stack", "export")
    assert export.code == 0, export.stderr
    urns = [r["urn"] for r in json.loads(export.stdout)["deployment"]["resources"]]
    assert any(urn.endswith("::frontend-site") for urn in urns)
    assert SECRET not in export.stdout
    missing = deployed.run("pulumi", "--tenant", "plain-1", "--env", "staging", "--", "config", "get", "nope")
    plain = shell(deployed, f"pulumi config get nope -s {STACK} || exit $?", "--tenant", "plain-1", "--env", "staging")
    assert missing.code == plain.returncode != 0
    fleet = deployed.run("pulumi", "--all-tenants", "--", "stack", "ls")
    assert fleet.code == 2 and len(fleet.stderr.strip().splitlines()) == 1


def test_doctor_passes_on_a_deployed_sandbox_and_names_an_empty_passphrase(deployed):
    doctor = deployed.run("doctor")
    assert doctor.code == 0, doctor.stdout + doctor.stderr
    names = [line.split(":", 1)[0].split(None, 1)[1] for line in doctor.stdout.splitlines()]
    assert names == [
        "engine",
        "language host",
        "backend",
        "ledger",
        "master passphrase",
        "registry",
        "postgresql driver",
    ]
    assert "1 tenant(s)" in doctor.stdout and "v" in doctor.stdout.splitlines()[0]
    master = (deployed.state / "passphrase").read_text().strip()
    assert master not in doctor.stdout + doctor.stderr
    empty = deployed.root / "empty-passphrase"
    empty.write_text("")
    empty.chmod(0o600)
    broken = deployed.run("doctor", env={"RUNNER_PASSPHRASE_FILE": str(empty)})
    assert broken.code == 1
    failing = [line for line in broken.stdout.splitlines() if line.startswith("FAIL")]
    assert failing == [
        f"FAIL master passphrase: {empty} is empty (restore it from your secret store: "
        "every stack's passphrase derives from it)"
    ]
