"""`runner doctor`: check the set-up, one line per check (#19).

Each check returns a :class:`Check`; none of them builds the engine, reaches
the internet or changes a deployment. The master passphrase is checked,
never printed.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import ops


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


def check_engine() -> tuple[Check, Path | None]:
    from runner import bootstrap

    found = bootstrap.find_engine()
    if found is None:
        return Check(
            "engine",
            False,
            f"no pulumi v{bootstrap.PULUMI_VERSION} in RUNNER_PULUMI_ROOT, on PATH or in "
            f"{bootstrap.cache_dir() / 'bin'} (build it: python -m runner.bootstrap)",
        ), None
    how, bin_dir = found
    return Check("engine", True, f"pulumi v{bootstrap.PULUMI_VERSION} from {how}: {bin_dir}"), bin_dir


def check_language_host(bin_dir: Path | None) -> Check:
    from runner import bootstrap

    if bin_dir is None:
        return Check("language host", False, "not checked: no engine")
    problems = []
    for name in bootstrap.COMPANIONS:
        path = bin_dir / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif name != "pulumi-language-python-exec" and not os.access(path, os.X_OK):
            problems.append(f"{name} not executable")
    if problems:
        return Check("language host", False, f"{', '.join(problems)} in {bin_dir}")
    return Check(
        "language host",
        True,
        "pulumi-language-python, its exec shim and the dynamic-provider script "
        f"pulumi-resource-pulumi-python in {bin_dir}",
    )


def check_backend(ctx: ops.Context, bin_dir: Path | None) -> Check:
    from runner import engine

    try:
        url = engine.backend_url_for(ctx.backend_url, ctx.runner_dir)
    except OSError as exc:
        return Check("backend", False, f"{ctx.backend_url}: cannot create its directory ({exc.strerror})")
    shown = _hide_password(url)
    writable = ""
    if url.startswith("file://"):
        folder = Path(url.removeprefix("file://").split("?", 1)[0])
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".runner-doctor-"):
                pass
        except OSError as exc:
            return Check("backend", False, f"{shown}: not writable ({exc.strerror})")
        writable = ", writable"
    if bin_dir is None:
        return Check("backend", False, f"{shown}: not checked: no engine")
    settings = engine.EngineSettings(
        bin_dir=bin_dir, project_dir=ctx.project_dir, backend_url=url, work_root=ctx.runner_dir / "work"
    )
    try:
        engine.prepare_program_dir(settings)
        stacks = engine.list_stacks(settings)
    except Exception as exc:  # any engine or file error is this check's failure
        lines = str(exc).strip().splitlines()
        message = exc.message if isinstance(exc, engine.EngineError) else (lines[-1] if lines else repr(exc))
        return Check("backend", False, f"{shown}: not reachable ({message})")
    if not writable and not url.startswith("file://"):
        writable = " (writability is proven by the first up)"
    return Check("backend", True, f"{shown}: reachable ({len(stacks)} stack(s)){writable}")


def check_ledger(ctx: ops.Context) -> Check:
    url = ctx.ledger_url
    shown = _hide_password(url)
    try:
        with ops.open_ledger(ctx) as ledger:
            last = ledger.last_run_id()
    except Exception as exc:  # a bad URL, an unreachable server, a missing driver
        lines = str(exc).strip().splitlines()
        return Check("ledger", False, f"{shown}: {lines[0] if lines else type(exc).__name__}")
    return Check("ledger", True, f"{shown}: ok (last run: {last or 'none yet'})")


def check_passphrase(ctx: ops.Context) -> Check:
    if "RUNNER_PASSPHRASE" in os.environ:
        if not os.environ["RUNNER_PASSPHRASE"].strip():
            return Check("master passphrase", False, "RUNNER_PASSPHRASE is set but empty")
        return Check("master passphrase", True, "from RUNNER_PASSPHRASE (non-empty)")
    path = Path(os.environ.get("RUNNER_PASSPHRASE_FILE") or ctx.runner_dir / "passphrase")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        content = path.read_text()
    except FileNotFoundError:
        return Check(
            "master passphrase",
            False,
            f"{path} does not exist (the first `runner up` creates it; "
            "or set RUNNER_PASSPHRASE / RUNNER_PASSPHRASE_FILE)",
        )
    except OSError as exc:
        return Check("master passphrase", False, f"{path}: cannot read it ({exc.strerror})")
    if not content.strip():
        return Check(
            "master passphrase",
            False,
            f"{path} is empty (restore it from your secret store: every stack's passphrase derives from it)",
        )
    if mode & 0o077:
        return Check("master passphrase", False, f"{path} has mode {mode:04o}, want 0600 (chmod 600 {path})")
    return Check("master passphrase", True, f"{path} (non-empty, mode {mode:04o})")


def check_registry(ctx: ops.Context) -> Check:
    from runner import registry as reg

    source = ctx.registry_source
    try:
        registry = reg.load_registry(source)
    except reg.RegistryError as exc:
        return Check(
            "registry",
            False,
            f"{_hide_password(source)}: invalid, {len(exc.errors)} problem(s), "
            f"first: {exc.errors[0] if exc.errors else '?'} (runner tenants validate)",
        )
    except Exception as exc:  # unreadable file, unreachable database
        return Check("registry", False, f"{_hide_password(source)}: {str(exc).strip().splitlines()[0]}")
    enabled = sum(1 for t in registry.tenants if t.enabled)
    return Check(
        "registry",
        True,
        f"{_hide_password(source)}: valid, {len(registry.tenants)} tenant(s) "
        f"({enabled} enabled), {len(registry.environment_names)} environment(s)",
    )


def check_postgres_driver(ctx: ops.Context) -> Check:
    urls = [ctx.backend_url or "", ctx.ledger_url, ctx.registry_source]
    if not any(u.startswith(("postgres://", "postgresql://", "postgresql+")) for u in urls):
        return Check("postgresql driver", True, "not needed (no postgres URL)")
    try:
        import psycopg
    except ImportError as exc:
        return Check("postgresql driver", False, f"psycopg cannot be imported ({exc})")
    return Check("postgresql driver", True, f"psycopg {psycopg.__version__}")


def run_checks(ctx: ops.Context) -> list[Check]:
    engine_check, bin_dir = check_engine()
    return [
        engine_check,
        check_language_host(bin_dir),
        check_backend(ctx, bin_dir),
        check_ledger(ctx),
        check_passphrase(ctx),
        check_registry(ctx),
        check_postgres_driver(ctx),
    ]
