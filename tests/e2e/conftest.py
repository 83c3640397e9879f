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

    def env(self, **extra) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "PULUMI_", "GITHUB_", "CI_"))}
        env.update(RUNNER_STATE_DIR=str(self.state), RUNNER_REGISTRY=str(self.registry_path),
                   RUNNER_PULUMI_ROOT=str(self.engine_bin.parent), **extra)
        # the platform root and migrations live in this temp dir, outside the project: allowed explicitly
        env.setdefault("RUNNER_PLATFORM_ROOTS", str(self.root))
        return env

    def write_registry(self, tenants: list[dict], *, environments=None, defaults=None, rollout=None) -> Path:
        doc = {
            "defaults": {"platform": "local", "app_version": "1.0.0", "platform_root": str(self.platform),
                         **(defaults or {})},
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
        proc = subprocess.run([RUNNER, *args], capture_output=True, text=True, cwd=PROJECT_DIR,
                              env=self.env(**(env or {})), timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([RUNNER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=PROJECT_DIR, env=self.env(**(env or {})), start_new_session=True)


def tenant(tid: str, envs=("staging",), **extra) -> dict:
    return {"id": tid, "name": tid.replace("-", " ").title(), "environments": list(envs), **extra}


@pytest.fixture
def sandbox(tmp_path, engine_bin) -> Sandbox:
    return Sandbox(tmp_path, engine_bin)
