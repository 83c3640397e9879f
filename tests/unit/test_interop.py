"""`runner env`, `runner pulumi`, `runner doctor` and shell completion, without the engine (#19)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner import cli, doctor, engine, ops

PROJECT_DIR = Path(__file__).resolve().parents[2]
RUNNER = str(Path(sys.executable).parent / "runner")


def _settings(work_root: Path) -> engine.EngineSettings:
    return engine.EngineSettings(
        bin_dir=Path("/opt/engine/bin"), project_dir=PROJECT_DIR, backend_url="file:///tmp/state", work_root=work_root
    )


def test_the_plain_cli_runs_from_the_generated_program_directory(tmp_path):
    # not the project directory: its Pulumi.yaml marks db_password secret, which the engine
    # enforces on stacks without one (seen: customer-2.staging after `make run`)
    assert (
        engine.plain_cli_directory(_settings(PROJECT_DIR / ".runner" / "work")) == PROJECT_DIR / ".runner" / "program"
    )
    assert engine.plain_cli_directory(_settings(tmp_path / "state" / "work")) == (tmp_path / "state" / "program")


def test_shell_lines_are_quoted_and_eval_to_the_exact_values(tmp_path):
    odd = 'it\'s $HOME `x` "q" ;&|'
    target = ops.PulumiEnvironment(
        stack="a-1.staging",
        directory=tmp_path / "dir with space",
        env={"PULUMI_CONFIG_PASSPHRASE": odd, "PULUMI_BACKEND_URL": "file:///a b"},
        path=[str(tmp_path / "bin dir"), "/venv/bin"],
    )
    script = (
        "\n".join(target.shell_lines()) + '\nprintf "%s\\n" "$PULUMI_CONFIG_PASSPHRASE" "$PULUMI_BACKEND_URL" '
        '"$PATH" "${PULUMI_CONFIG_PASSPHRASE_FILE-unset}"'
    )
    env = {"PATH": "/usr/bin:/bin", "PULUMI_CONFIG_PASSPHRASE_FILE": "/somewhere"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines() == [odd, "file:///a b", f"{tmp_path / 'bin dir'}:/venv/bin:/usr/bin:/bin", "unset"]


def test_the_child_environment_drops_the_master_passphrase():
    target = ops.PulumiEnvironment(
        stack="s", directory=Path("/"), env={"PULUMI_CONFIG_PASSPHRASE": "derived"}, path=["/engine"]
    )
    child = target.child_environment(
        {
            "PATH": "/bin",
            "RUNNER_PASSPHRASE": "master",
            "RUNNER_PASSPHRASE_FILE": "/f",
            "PULUMI_CONFIG_PASSPHRASE_FILE": "/g",
            "HOME": "/root",
        }
    )
    assert child == {"PATH": "/engine:/bin", "PULUMI_CONFIG_PASSPHRASE": "derived", "HOME": "/root"}


@pytest.mark.parametrize(
    "args",
    [
        ["pulumi", "--all-tenants", "--", "stack", "ls"],
        ["pulumi", "--tag", "tier=premium", "--", "stack", "ls"],
        ["pulumi", "--tenant", "customer-1", "--tenant", "customer-2", "--env", "staging", "--", "stack", "ls"],
        ["pulumi", "--shard", "0/2", "--", "stack", "ls"],
        ["env", "--all-tenants"],
        ["env", "--tenant", "customer-1"],
        ["env", "--stack", "shared", "--tenant", "customer-1", "--env", "staging"],
        ["env", "--tenant", "nobody", "--env", "staging"],
        ["pulumi", "--tenant", "customer-1", "--env", "staging"],
    ],
)
def test_one_stack_commands_refuse_fleets_and_bad_selectors_with_one_line(args):
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.output


def test_env_help_says_the_output_is_a_secret():
    assert "SECRET" in CliRunner().invoke(cli.main, ["env", "--help"]).output


def _complete(words: str, registry: Path | None = None) -> list[str]:
    env = {
        **os.environ,
        "_RUNNER_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    env.pop("RUNNER_REGISTRY", None)
    if registry:
        env["RUNNER_REGISTRY"] = str(registry)
    out = subprocess.run([RUNNER], capture_output=True, text=True, env=env, check=True).stdout
    return [line.split(",", 1)[1] for line in out.splitlines() if line]


def test_shell_completion_offers_the_registrys_tenants_and_environments(tmp_path):
    assert _complete("runner up --tenant cus") == ["customer-1", "customer-2", "customer-3"]
    assert _complete("runner env --tenant int") == ["internal-qa"]
    assert _complete("runner drift --env st") == ["staging"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("tenants: [")
    assert _complete("runner up --tenant ", broken) == []  # never a traceback in the user's shell


def test_doctor_passphrase_check(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_PASSPHRASE", raising=False)
    monkeypatch.delenv("RUNNER_PASSPHRASE_FILE", raising=False)
    ctx = ops.Context(state_dir=tmp_path)
    assert not doctor.check_passphrase(ctx).ok and "does not exist" in doctor.check_passphrase(ctx).detail
    path = tmp_path / "passphrase"
    path.write_text("s3cret-master\n")
    path.chmod(0o644)
    check = doctor.check_passphrase(ctx)
    assert not check.ok and "0644" in check.detail and "s3cret" not in check.line()
    path.chmod(0o600)
    assert doctor.check_passphrase(ctx).ok
    monkeypatch.setenv("RUNNER_PASSPHRASE", " ")
    assert not doctor.check_passphrase(ctx).ok


def test_doctor_needs_the_postgres_driver_only_for_postgres_urls(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_BACKEND", raising=False)
    monkeypatch.delenv("RUNNER_LEDGER", raising=False)
    assert "not needed" in doctor.check_postgres_driver(ops.Context(state_dir=tmp_path)).detail
    check = doctor.check_postgres_driver(ops.Context(state_dir=tmp_path, ledger="postgresql://u:pw@127.0.0.1/db"))
    assert check.ok and check.detail.startswith("psycopg ")
    monkeypatch.setitem(sys.modules, "psycopg", None)  # the driver is not installed
    assert not doctor.check_postgres_driver(ops.Context(state_dir=tmp_path, backend="postgres://h/db")).ok


def test_doctor_fails_with_the_failing_line_and_exit_1(monkeypatch):
    checks = [doctor.Check("engine", True, "fine"), doctor.Check("registry", False, "broken")]
    monkeypatch.setattr(doctor, "run_checks", lambda ctx: checks)
    result = CliRunner().invoke(cli.main, ["doctor"])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["ok   engine: fine", "FAIL registry: broken"]
    monkeypatch.setattr(doctor, "run_checks", lambda ctx: checks[:1])
    assert CliRunner().invoke(cli.main, ["doctor"]).exit_code == 0
