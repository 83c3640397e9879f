"""#15.6 and #15.11: argv redaction and file modes of the ledger, the run id in
Slack text, and the program commit a rollback checks out."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from runner import releases
from runner.ledger import Ledger
from runner.notify import slack_payload
from runner.report import Report, TargetResult

PROJECT = Path(__file__).resolve().parents[2]


# --- #15.6: secrets in argv are redacted before they are stored --------------

ARGV = [
    "up",
    "--all-tenants",
    "--notify",
    "slack:https://hooks.slack.com/services/T0/B0/XOXBSECRET1",
    "--notify=webhook:https://ci.example.com/hook?token=TOKSECRET2&x=1",
    "--backend",
    "postgres://runner:PGSECRET3@db.example.com:5432/state",
    "--ledger=postgresql+psycopg://ledger:PGSECRET4@db/ledger",
    "--registry",
    "postgresql://u:PGSECRET5@h/db?table=tenants",
    "--release",
    "v1",
    "--run-id",
    "r-1",
    "--report-json",
    "out.json",
    "api_key=KEYSECRET6",
]


def test_redact_argv_removes_every_credential():
    from runner.ledger import redact_argv

    redacted = redact_argv(ARGV)
    text = " ".join(redacted)
    for secret in ("XOXBSECRET1", "TOKSECRET2", "PGSECRET3", "PGSECRET4", "PGSECRET5", "KEYSECRET6"):
        assert secret not in text, (secret, redacted)
    assert redacted[:3] == ["up", "--all-tenants", "--notify"]
    assert redacted[3].startswith("slack:") and redacted[4].startswith("--notify=webhook:")
    assert "postgres://runner:***@db.example.com:5432/state" in redacted
    assert redacted[-7:-1] == ["--release", "v1", "--run-id", "r-1", "--report-json", "out.json"]


def test_the_ledger_stores_argv_redacted_and_its_file_is_private(tmp_path):
    url = f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
    with Ledger(url) as ledger:
        ledger.start_run("r1", "up", argv=ARGV)
        stored = ledger.run("r1").argv
    assert "PGSECRET3" not in json.dumps(stored) and "XOXBSECRET1" not in json.dumps(stored)
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    assert b"PGSECRET3" not in raw and b"XOXBSECRET1" not in raw
    for path in (tmp_path / "state").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_an_existing_world_readable_ledger_is_made_private(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger(f"sqlite:///{path}"):
        pass
    path.chmod(0o644)
    with Ledger(f"sqlite:///{path}"):
        pass
    assert path.stat().st_mode & 0o777 == 0o600


def test_state_dirs_are_private(tmp_path, monkeypatch):
    from runner.fleet import Fleet

    monkeypatch.setenv("RUNNER_PASSPHRASE", "x")
    state = tmp_path / ".runner"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    Fleet(PROJECT, state_dir=state, bin_dir=tmp_path)
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "state").stat().st_mode & 0o777 == 0o700  # the default file:// backend


# --- #15.11: run id in Slack text, rollback's program commit ---------------------


def test_run_id_cannot_ping_the_channel_in_slack_text():
    report = Report(run_id="<!channel> & <https://evil|click>", command="up")
    report.add(TargetResult("t", "staging", "t.staging", "up", "failed", error="boom"))
    payload = slack_payload(report)
    text = json.dumps(payload)
    assert "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;" in payload["text"]


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    _git("init", "-q", cwd=root)
    for n in (1, 2):
        (root / "f").write_text(str(n))
        _git("add", "f", cwd=root)
        _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", f"c{n}", cwd=root)
    return root


@pytest.mark.parametrize(
    "commit",
    [
        "--orphan=x",
        "-b",
        "HEAD~1",
        "main",
        "HEAD",
        "0" * 40,
        "deadbeef" * 5,
        "../../etc",
        "abc",
        "g" * 40,
        "{first}^{{tree}}",
        "{first}:f",
    ],
)
def test_rollback_refuses_a_program_commit_that_is_not_a_commit_of_this_repository(repo, tmp_path, commit):
    first = _git("rev-parse", "HEAD~1", cwd=repo)
    state = tmp_path / ".runner"
    with pytest.raises(releases.RollbackImpossible, match="not a commit of this repository"):
        releases.program_at(repo, state, commit.format(first=first), _git("rev-parse", "HEAD", cwd=repo)[:12])
    assert not (state / "worktrees").exists() or not any((state / "worktrees").iterdir())


def test_rollback_checks_out_a_full_commit_id_of_this_repository(repo, tmp_path):
    first = _git("rev-parse", "HEAD~1", cwd=repo)
    head = _git("rev-parse", "HEAD", cwd=repo)
    state = tmp_path / ".runner"
    program = releases.program_at(repo, state, f"{first}-dirty", head[:12])
    assert program.dir == str(state / "worktrees" / first)
    assert (Path(program.dir) / "f").read_text() == "1"
    assert releases.program_at(repo, state, head, head[:12]) is None, "the checkout's own program"
    # rows recorded before full ids: a short hex id is expanded to the full commit first
    assert releases.program_at(repo, state, first[:12], head[:12]).dir == str(state / "worktrees" / first)


def test_a_new_state_dir_made_by_a_ledger_command_is_private(tmp_path, monkeypatch):
    """`runner status`/`history` create .runner/ for the ledger alone: 0700 from the start."""
    from runner import ops

    monkeypatch.delenv("RUNNER_LEDGER", raising=False)
    with ops.open_ledger(ops.Context(state_dir=tmp_path / ".runner")):
        pass
    assert (tmp_path / ".runner").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / ".runner" / "ledger.db").stat().st_mode & 0o777 == 0o600
