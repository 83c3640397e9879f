"""Reliability: a secret value never leaves the engine unencrypted.

A sentinel value is given to one tenant through `secrets: {db_password: {env: VAR}}`.
Every command a user or CI runs on that tenant (up, preview, drift, outputs,
history, status --json/--html, report --json/--junit, --log-format json,
--json, a failing up, notifications, the GitHub step summary) is run, and the
sentinel must appear in none of their outputs, in no file the runner wrote
(ledger, logs, reports, dashboard, generated stack config, Pulumi state), and
on no process command line while they run (sampled every 20 ms).
"""

from __future__ import annotations

import http.server
import os
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
        run("up", "--all-tenants", "--yes", "--concurrency", "2", "--json", "--log-format", "json",
            "--report-json", str(out / "up.json"), "--junit", str(out / "up.xml"), "--notify", f"webhook:{url}")
        run("preview", "--tenant", "sec-1", "--json", "--log-format", "json", "--report-json", str(out / "preview.json"))
        run("preview", "--tenant", "sec-1", "--detailed-exitcode")
        run("drift", "--all-tenants", "--json", "--junit", str(out / "drift.xml"), "--notify", f"webhook:{url}",
            expect=(0, 3))
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
        failed = run("up", "--all-tenants", "--yes", "--json", "--log-format", "json", "--notify", f"webhook:{url}",
                     "--report-json", str(out / "failed.json"), "--junit", str(out / "failed.xml"), expect=(1,))
        assert failed.by_stack()["sec-1.staging"]["status"] == "failed"
        run("report", "--json", expect=(1,))
        run("rollback", "--tenant", "sec-1", "--yes", "--json", expect=(0, 1))
    finally:
        sampler.stop.set()
        sampler.join()

    # the secret really reached the stack (encrypted), so the test is meaningful
    config = (sandbox.state / "program" / "stacks" / "Pulumi.sec-1.staging.yaml").read_text()
    assert "runner:db_password" in config and "secure:" in config

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
    for path in _files(sandbox.platform):  # the local platform's artifacts do not use db_password at all
        assert needle not in path.read_bytes(), f"sentinel in {path.relative_to(sandbox.root)}"
    assert (sandbox.state / "ledger.db").is_file() and list((sandbox.state / "logs").rglob("*.log"))
    assert list((sandbox.state / "state" / ".pulumi" / "stacks").rglob("sec-1.staging.json"))
