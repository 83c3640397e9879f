"""Every user error is one line on stderr and a documented exit code, never a
traceback: a bad ledger URL, no engine (no Go toolchain, no cache), a bad
state backend, registry or --notify URL, an engine error outside any target."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from runner import cli, engine, ops
from runner import report as rpt

REGISTRY = """\
defaults: {{platform: local, app_version: "1.0.0", platform_root: {root}/platform}}
environments: [{{name: staging}}]
tenants:
  - {{id: shop-1, environments: [staging]}}
"""


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Invoke the CLI in-process on a one-tenant registry under tmp_path; return (exit code, stderr)."""
    registry = tmp_path / "tenants.yaml"
    registry.write_text(REGISTRY.format(root=tmp_path))
    monkeypatch.chdir(tmp_path)
    for name in ("RUNNER_BACKEND", "RUNNER_LEDGER", "RUNNER_REGISTRY", "RUNNER_NOTIFY", "RUNNER_PULUMI_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNNER_PLATFORM_ROOTS", str(tmp_path))

    def invoke(*args: str, ledger: str | None = None, backend: str | None = None, env: dict | None = None):
        argv = [
            *args,
            "--registry",
            str(registry),
            "--ledger",
            ledger or f"sqlite:///{tmp_path / 'ledger.db'}",
            "--backend",
            backend or (tmp_path / "state").as_uri(),
        ]
        result = CliRunner().invoke(cli.main, argv, env=env)
        # An exception other than SystemExit is what a user would see as a traceback.
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output + result.stderr
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1, result.stderr
        return result.exit_code, errors[0]

    return invoke


@pytest.mark.parametrize(
    "url, message",
    [
        ("foo://x", "unsupported ledger URL scheme 'foo'"),
        ("postgresql+psycopg2://h/db", "unsupported PostgreSQL driver in ledger URL 'postgresql+psycopg2'"),
    ],
)
def test_bad_ledger_url(run, url, message):
    code, line = run("up", "--all-tenants", "--yes", ledger=url)
    assert code == rpt.EXIT_FAILED and line.startswith("error: ledger: ") and message in line


def test_ledger_unreachable(run):
    code, line = run("status", ledger="postgresql://nobody@127.0.0.1:1/db")
    assert code == rpt.EXIT_FAILED and line.startswith("error: ledger: OperationalError: ")
    assert "\n" not in line and "sqlalche.me" not in line


@pytest.mark.parametrize("url", ["foo://x", "s3:/bucket", "not a url"])
def test_bad_backend_url(run, url):
    code, line = run("up", "--all-tenants", "--yes", backend=url)
    assert code == rpt.EXIT_USAGE and line.startswith("error: --backend") and "file://" in line


def test_bad_backend_url_from_the_environment(run, tmp_path):
    result = CliRunner().invoke(
        cli.main,
        ["status", "--registry", str(tmp_path / "tenants.yaml"), "--ledger", f"sqlite:///{tmp_path / 'l.db'}"],
        env={"RUNNER_BACKEND": "foo://x"},
    )
    assert result.exit_code == rpt.EXIT_USAGE, result.stderr
    assert result.stderr.startswith("error: RUNNER_BACKEND") and len(result.stderr.strip().splitlines()) == 1


def test_engine_unavailable(run, tmp_path):
    """No pulumi at the pinned version on PATH or in the cache, no Go, no curl: one line, exit 1."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    code, line = run(
        "outputs",
        "--tenant",
        "shop-1",
        "--env",
        "staging",
        env={"PATH": str(empty), "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert code == rpt.EXIT_FAILED and line.startswith("error: engine: ")


def test_engine_error_outside_a_target(run, monkeypatch):
    """The backend refuses to list stacks before any target runs (e.g. `--backend s3://`)."""

    def refuse(*args, **kwargs):
        raise engine.OperationFailed('stderr: error: unable to open bucket "s3://":\nbucketName is required')

    monkeypatch.setattr(ops, "fleet_run", refuse)
    code, line = run("preview", "--all-tenants")
    assert code == rpt.EXIT_FAILED
    assert line == 'error: engine: stderr: error: unable to open bucket "s3://": bucketName is required'


def test_bad_registry_url(run, tmp_path):
    result = CliRunner().invoke(cli.main, ["status", "--registry", "foo://x", "--ledger", f"sqlite:///{tmp_path}/l"])
    assert result.exit_code == rpt.EXIT_USAGE, result.stderr
    assert result.stderr.startswith("error: foo://...: unsupported registry URL")


@pytest.mark.parametrize("spec", ["foo", "slack:notaurl", "webhook:ftp://x"])
def test_bad_notify_url(run, spec):
    code, line = run("up", "--all-tenants", "--yes", "--notify", spec)
    assert code == rpt.EXIT_USAGE and line.startswith("error: --notify: ")
