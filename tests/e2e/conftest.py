"""An isolated sandbox per test: its own registry, state dir (backend, ledger,
work areas, generated stack config) and platform root, driving the real
`runner` CLI, which drives the real engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from runner.ops import program_commit

PROJECT_DIR = Path(__file__).resolve().parents[2]
RUNNER = str(Path(sys.executable).parent / "runner")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)

    def by_stack(self) -> dict[str, dict]:
        return {t["stack"]: t for t in self.json["targets"]}


class Sandbox:
    def __init__(self, root: Path, engine_bin: Path):
        self.root = root
        self.state = root / ".runner"
        self.platform = root / "platform"
        self.registry_path = root / "tenants.yaml"
        self.engine_bin = engine_bin

    project: Path | None = None  # RUNNER_PROJECT_DIR: a clone of the project (see project_clone)

    def env(self, **extra) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "PULUMI_", "GITHUB_", "CI_"))}
        env.update(
            RUNNER_STATE_DIR=str(self.state),
            RUNNER_REGISTRY=str(self.registry_path),
            RUNNER_PULUMI_ROOT=str(self.engine_bin.parent),
            **extra,
        )
        # the platform root and migrations live in this temp dir, outside the project: allowed explicitly
        env.setdefault("RUNNER_PLATFORM_ROOTS", str(self.root))
        if self.project is not None:
            env.setdefault("RUNNER_PROJECT_DIR", str(self.project))
        return env

    def git(self, *args: str) -> str:
        """git in the project clone (never in the real project)."""
        assert self.project is not None and self.project != PROJECT_DIR
        return subprocess.run(
            ["git", "-C", str(self.project), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    def release(self) -> str:
        """The clone's default release label: its program's commit (runner.ops.program_commit)."""
        assert self.project is not None and self.project != PROJECT_DIR
        return program_commit(self.project)

    def commit(self, message: str) -> str:
        """Commit everything in the clone; returns the default release label after it."""
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.release()

    def write_registry(self, tenants: list[dict], *, environments=None, defaults=None, rollout=None) -> Path:
        doc = {
            "defaults": {
                "platform": "local",
                "app_version": "1.0.0",
                "platform_root": str(self.platform),
                **(defaults or {}),
            },
            "environments": environments or [{"name": "staging"}, {"name": "production", "require_tenant": True}],
            "tenants": tenants,
        }
        if rollout:
            doc["rollout"] = rollout
        with open(self.registry_path, "w") as handle:
            YAML().dump(doc, handle)
        return self.registry_path

    def broken_migrations(self, name: str = "broken") -> Path:
        """The good migrations plus one with invalid SQL."""
        target = self.root / f"migrations-{name}"
        if not target.exists():
            shutil.copytree(PROJECT_DIR / "stacks" / "migrations", target)
            (target / "900_broken.sql").write_text("CREATE TABLEE broken (id INTEGER);\n")
        return target

    def run(self, *args: str, env: dict | None = None, timeout: float = 900) -> Result:
        proc = subprocess.run(
            [RUNNER, *args],
            capture_output=True,
            text=True,
            cwd=PROJECT_DIR,
            env=self.env(**(env or {})),
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            [RUNNER, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=PROJECT_DIR,
            env=self.env(**(env or {})),
            start_new_session=True,
        )


def project_clone(root: Path) -> Path:
    """A temporary git clone of the project, plus the work tree's uncommitted
    changes (committed in the clone), so tests can commit breaks without ever
    touching the real repository. Point the runner at it with RUNNER_PROJECT_DIR."""
    clone = root / "project"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(PROJECT_DIR), str(clone)], check=True)
    for key, value in (("user.name", "runner tests"), ("user.email", "tests@localhost"), ("commit.gpgsign", "false")):
        subprocess.run(["git", "-C", str(clone), "config", key, value], check=True)
    listing = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "ls-files", "-z", "--modified", "--others", "--deleted", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for rel in sorted(set(filter(None, listing.split("\0")))):
        source, dest = PROJECT_DIR / rel, clone / rel
        if source.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
        elif dest.exists():
            dest.unlink()
    if subprocess.run(
        ["git", "-C", str(clone), "status", "--porcelain"], capture_output=True, text=True, check=True
    ).stdout.strip():
        subprocess.run(["git", "-C", str(clone), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(clone), "commit", "-q", "-m", "the work tree under test"], check=True)
    return clone


def tenant(tid: str, envs=("staging",), **extra) -> dict:
    return {"id": tid, "name": tid.replace("-", " ").title(), "environments": list(envs), **extra}


@pytest.fixture
def sandbox(tmp_path, engine_bin) -> Sandbox:
    return Sandbox(tmp_path, engine_bin)


# --------------------------------------------------------------------------- shared fleets (#18)
# Deployed once and shared by many read-only tests (tests/e2e/test_commands_*.py and the dashboard):
# a test that changes the fleet uses a fleet of its own.

import http.server  # noqa: E402
import threading  # noqa: E402


class Hook:
    """A local HTTP endpoint (Slack or webhook) recording every POST as (path, JSON body)."""

    def __init__(self):
        posts: list[tuple[str, dict]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.posts = posts
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def received(self, path: str) -> list[dict]:
        return [body for p, body in self.posts if p == path]


@pytest.fixture(scope="session")
def hook():
    endpoint = Hook()
    yield endpoint
    endpoint.server.shutdown()


SHARED_ROLLOUT = {"waves": [{"name": "gold", "tags": {"tier": "gold"}}, {"name": "rest"}]}
SHARED_TENANTS = [
    tenant("gold-1", tags={"tier": "gold", "region": "eu"}),
    tenant("gold-2", tags={"tier": "gold", "region": "us"}),
    tenant("plain-1", tags={"tier": "standard", "region": "eu"}),
]


@pytest.fixture(scope="session")
def shared_fleet(tmp_path_factory, engine_bin, hook):
    """Three tenants (staging) in two rollout waves, deployed ONCE as a CI job would:
    GitHub's run id, a step summary, JSON progress lines and a Slack notification.
    Tests using it must leave it as deployed (release r1, every target succeeded)."""
    box = Sandbox(tmp_path_factory.mktemp("shared-fleet"), engine_bin)
    box.write_registry(SHARED_TENANTS, rollout=SHARED_ROLLOUT)
    box.step_summary = box.root / "step-summary.md"
    box.deployed = box.run(
        "up",
        "--all-tenants",
        "--yes",
        "--json",
        "--release",
        "r1",
        "--log-format",
        "json",
        "--notify",
        f"slack:{hook.url('/slack/deploy')}",
        env={
            "GITHUB_RUN_ID": "4242",
            "GITHUB_RUN_ATTEMPT": "2",
            "NO_PROXY": "127.0.0.1",
            "GITHUB_STEP_SUMMARY": str(box.step_summary),
        },
    )
    assert box.deployed.code == 0, box.deployed.stderr[-3000:]
    return box
