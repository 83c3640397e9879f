"""Reliability: a secret value reaches its one destination and nothing else.

A sentinel value is given to one tenant through `secrets: {db_password: {env: VAR}}`.
The program hands it to the backend, which writes it to the release's
`backend.env` (mode 0600), where the app reads it: so the value really flows
through the engine, the state and the dynamic provider. Every command a user or
CI runs that handles the secret (COMMANDS below: up, preview, drift, refresh,
outputs, history, status --json/--html, report --json/--junit, a failing up,
rollback, recover, the recovering up; with --log-format json, --json,
--report-json, --junit, notifications and the GitHub step summary) is run. The
sentinel must be in that env file, held as a ciphertext in the stack's
checkpoint, and appear in none of the commands' outputs, in no other file the
runner wrote (ledger, logs, reports, dashboard, generated stack config, Pulumi
state), in no notification payload and on no process command line while they
run (sampled every 20 ms).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e


class _Recorder(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append(self.path.encode() + b"\n" + bytes(self.headers) + self.rfile.read(length))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class CmdlineSampler(threading.Thread):
    """Reads every /proc/*/cmdline every 20 ms; remembers the ones holding the needle."""

    def __init__(self, needle: bytes):
        super().__init__(daemon=True)
        self.needle = needle
        self.hits: list[str] = []
        self.samples = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if self.needle in cmd:
                    self.hits.append(cmd.replace(b"\0", b" ").decode(errors="replace"))
            self.samples += 1
            time.sleep(0.02)


@pytest.fixture
def webhook():
    _Recorder.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Recorder.bodies
    server.shutdown()


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


#: The commands the test runs (each handles the tenant's secret); the README and
#: docs/reliability.md name this count.
COMMANDS = 17


def _secrets_in(node) -> list[dict]:
    """Every `{"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", ...}` value in a checkpoint."""
    if isinstance(node, dict):
        if node.get("4dabf18193072939515e22adb298388d") == "1b47061264138c4ac30d75fd1eb44270":
            return [node]
        return [found for value in node.values() for found in _secrets_in(value)]
    if isinstance(node, list):
        return [found for value in node for found in _secrets_in(value)]
    return []


def test_a_secret_value_appears_in_no_output_file_or_command_line(sandbox, webhook):
    url, bodies = webhook
    sentinel = f"S3NT1NEL-{uuid.uuid4().hex}"
    needle = sentinel.encode()
    summary = sandbox.root / "step-summary.md"
    out = sandbox.root / "out"
    out.mkdir()
    env = {"SEC_DB_PASSWORD": sentinel, "GITHUB_STEP_SUMMARY": str(summary)}
    secret_tenant = tenant("sec-1", secrets={"db_password": {"env": "SEC_DB_PASSWORD"}})
    sandbox.write_registry([secret_tenant, tenant("sec-2")])

    sampler = CmdlineSampler(needle)
    sampler.start()
    results = []

    def run(*args, expect=(0,)):
        result = sandbox.run(*args, env=env)
        assert result.code in expect, (args, result.code, result.stderr[-2000:])
        results.append((args, result))
        return result

    try:
        run(
            "up",
            "--all-tenants",
            "--yes",
            "--concurrency",
            "2",
            "--json",
            "--log-format",
            "json",
            "--report-json",
            str(out / "up.json"),
            "--junit",
            str(out / "up.xml"),
            "--notify",
            f"webhook:{url}",
        )
        run(
            "preview", "--tenant", "sec-1", "--json", "--log-format", "json", "--report-json", str(out / "preview.json")
        )
        run("preview", "--tenant", "sec-1", "--detailed-exitcode")
        run(
            "drift",
            "--all-tenants",
            "--json",
            "--junit",
            str(out / "drift.xml"),
            "--notify",
            f"webhook:{url}",
            expect=(0, 3),
        )
        run("refresh", "--tenant", "sec-1", "--yes", "--json")
        run("outputs", "--tenant", "sec-1", "--env", "staging", "--json")
        run("outputs", "--tenant", "sec-1", "--env", "staging")
        run("history", "--tenant", "sec-1", "--env", "staging", "--json")
        run("history", "--tenant", "sec-1", "--env", "staging")
        run("status", "--json", "--html", str(out / "fleet.html"))
        run("status")
        run("report", "--json", "--junit", str(out / "report.xml"), "--report-json", str(out / "report.json"))
        # a failing up of the tenant holding the secret (broken migration), with a new secret-bearing config
        secret_tenant["config"] = {"migrations_dir": str(sandbox.broken_migrations())}
        sandbox.write_registry([secret_tenant, tenant("sec-2")], defaults={"app_version": "1.1.0"})
        failed = run(
            "up",
            "--all-tenants",
            "--yes",
            "--json",
            "--log-format",
            "json",
            "--notify",
            f"webhook:{url}",
            "--report-json",
            str(out / "failed.json"),
            "--junit",
            str(out / "failed.xml"),
            expect=(1,),
        )
        assert failed.by_stack()["sec-1.staging"]["status"] == "failed"
        run("report", "--json", expect=(1,))
        run("rollback", "--tenant", "sec-1", "--yes", "--json", expect=(0, 1))
        run("recover", "--tenant", "sec-1", "--json")
        secret_tenant["config"] = {}
        sandbox.write_registry([secret_tenant, tenant("sec-2")], defaults={"app_version": "1.2.0"})
        run("up", "--tenant", "sec-1", "--yes", "--json", "--log-format", "json", "--notify", f"webhook:{url}")
    finally:
        sampler.stop.set()
        sampler.join()

    # the secret really reached the stack (encrypted), so the test is meaningful
    config = (sandbox.state / "program" / "stacks" / "Pulumi.sec-1.staging.yaml").read_text()
    assert "runner:db_password" in config and "secure:" in config

    assert len(results) == COMMANDS, [args[0] for args, _ in results]
    # the one destination: the current release's env file, readable by its owner only
    env_file = sandbox.platform / "accounts" / "sec-1" / "staging" / "backend" / "current" / "backend.env"
    assert env_file.read_text() == f"DB_PASSWORD={sentinel}\n"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert os.readlink(env_file.parent) == "releases/1.2.0"
    app = subprocess.run([sys.executable, "app.py"], cwd=env_file.parent, capture_output=True, text=True, check=True)
    assert json.loads(app.stdout)["database_password"] == "set" and sentinel not in app.stdout  # the app reads it
    holders = sorted(str(p.relative_to(sandbox.platform)) for p in _files(sandbox.platform) if needle in p.read_bytes())
    # every release written while the secret was configured holds it; nothing else on the platform
    assert holders and all(
        h.startswith("accounts/sec-1/staging/backend/releases/") and h.endswith("/backend.env") for h in holders
    ), holders
    assert not list((sandbox.platform / "accounts" / "sec-2").rglob("backend.env"))
    # encrypted in the state: the Release's env is a secret (a ciphertext) in its inputs and outputs
    checkpoint = json.loads(
        next((sandbox.state / "state" / ".pulumi" / "stacks").rglob("sec-1.staging.json")).read_text()
    )["checkpoint"]["latest"]
    release = [r for r in checkpoint["resources"] if r["urn"].endswith("::backend-app")]
    assert len(release) == 1, [r["urn"] for r in checkpoint["resources"]]
    for side in ("inputs", "outputs"):
        env = release[0][side].get("env")
        assert _secrets_in(env) and _secrets_in(env)[0].get("ciphertext"), (side, env)

    for args, result in results:
        assert sentinel not in result.stdout, f"sentinel on stdout of {args}"
        assert sentinel not in result.stderr, f"sentinel on stderr of {args}"
    assert sampler.samples > 100, sampler.samples
    assert not sampler.hits, f"sentinel on a command line: {sampler.hits[:3]}"
    assert bodies, "no notification was sent"
    for body in bodies:
        assert needle not in body, "sentinel in a notification payload"
    assert summary.is_file() and needle not in summary.read_bytes(), "sentinel in the GitHub step summary"
    for path in _files(out):
        assert needle not in path.read_bytes(), f"sentinel in {path.name}"
    # everything the runner keeps: ledger, logs, generated stack config, Pulumi state, work areas
    checked = 0
    for path in _files(sandbox.state):
        checked += 1
        assert needle not in path.read_bytes(), f"sentinel in {path.relative_to(sandbox.root)}"
    assert checked > 20
    assert (sandbox.state / "ledger.db").is_file() and list((sandbox.state / "logs").rglob("*.log"))
    assert list((sandbox.state / "state" / ".pulumi" / "stacks").rglob("sec-1.staging.json"))
