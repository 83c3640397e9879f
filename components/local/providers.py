"""Dynamic providers of the local platform.

Each provider is a stateless class at module level: Pulumi pickles the
provider instance with dill and runs it in a separate process
(``pulumi-resource-pulumi-python``), where dill imports this module by
reference. So: no attributes, no closures, no captured Outputs.

Every provider implements create, read, diff, update and delete. ``read``
reports the artifact as it really is on disk and keeps the resource id even
when the artifact is gone (``exists: False`` / a ``<missing>`` hash): a
refresh then shows an *update* of exactly that resource instead of silently
dropping it from the state, and the next ``up`` repairs it.

Outputs always include the inputs, so ``diff`` and ``delete`` see them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import string
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pulumi.dynamic import (
    ConfigureRequest,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from components.local import _fs

_SKIP = {"__provider"}

#: Config keys of the simulated cloud API (Pulumi.yaml declares them).
LATENCY_KEY = "simulated_latency_ms"
THROTTLE_KEY = "simulated_throttle_rate"
#: What a throttled call's error says (the words of AWS's throttling errors).
THROTTLE_MESSAGE = "ThrottlingException: Rate exceeded (simulated)"


class ThrottlingError(Exception):
    """A simulated throttled API call (nothing was changed)."""


def simulation_settings(latency_ms: Any, throttle_rate: Any) -> tuple[float, float]:
    """(latency in seconds, throttle rate) from the config values (strings in
    stack config; empty or None means 0); ValueError naming the key if invalid."""

    def number(key: str, value: Any, kind: type) -> float:
        if value in (None, ""):
            return 0
        try:
            return kind(str(value).strip())
        except ValueError:
            raise ValueError(
                f"config {key}: expected {'a whole number of milliseconds' if kind is int else 'a fraction between 0 and 1'}, "
                f"got {value!r}"
            ) from None

    latency = number(LATENCY_KEY, latency_ms, int)
    rate = number(THROTTLE_KEY, throttle_rate, float)
    if not 0 <= latency <= 600_000:
        raise ValueError(f"config {LATENCY_KEY}: expected 0 to 600000 milliseconds, got {latency_ms!r}")
    if not 0 <= rate <= 1:
        raise ValueError(f"config {THROTTLE_KEY}: expected a fraction between 0 and 1, got {throttle_rate!r}")
    return latency / 1000, rate


def _inputs(props: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if k not in _SKIP}


class _Provider(ResourceProvider):
    # Nothing secret is captured: keep the serialized provider in plain text.
    serialize_as_secret_always = False

    # Subclasses: which inputs force a replacement, which are compared.
    replace_keys: tuple[str, ...] = ()

    def observe(self, props: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        """The computed outputs as they are on disk now."""
        raise NotImplementedError

    def expect(self, props: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        """The computed outputs a correct deployment of ``props`` has."""
        raise NotImplementedError

    def apply(self, props: dict[str, Any], olds: dict[str, Any] | None) -> None:  # pragma: no cover
        raise NotImplementedError

    def resource_id(self, props: dict[str, Any]) -> str:  # pragma: no cover
        raise NotImplementedError

    # -- the simulated cloud API -------------------------------------------
    # Set from the stack's config when the engine configures the provider
    # (dynamic providers receive the whole stack config): never part of the
    # serialized provider, the inputs or the outputs, so changing them changes
    # no resource, and they apply to every call, refresh and destroy included.
    _latency_s: float = 0.0
    _throttle_rate: float = 0.0
    _rng: random.Random | None = None

    def configure(self, req: ConfigureRequest) -> None:
        self.simulate(*simulation_settings(req.config.get(LATENCY_KEY), req.config.get(THROTTLE_KEY)))

    def simulate(self, latency_s: float, throttle_rate: float, seed: int | None = None) -> None:
        """Make each create/read/update/delete wait ``latency_s`` and fail a
        ``throttle_rate`` fraction of them as throttled (``seed``: a
        reproducible sequence of throttled calls; default: OS entropy)."""
        self._latency_s, self._throttle_rate = latency_s, throttle_rate
        self._rng = random.Random(seed)

    def _cloud_call(self, operation: str, name: str) -> None:
        if self._latency_s:
            time.sleep(self._latency_s)
        if self._throttle_rate and self._rng is not None and self._rng.random() < self._throttle_rate:
            raise ThrottlingError(f"{THROTTLE_MESSAGE}: {operation} {type(self).__name__} {name}")

    # -- CRUD: one simulated API call each, then the provider's own hook --
    def create(self, props: dict[str, Any]) -> CreateResult:
        self._cloud_call("create", self.resource_id(_inputs(props)))
        return self._create(props)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        self._cloud_call("read", id_)
        return self._read(id_, props)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        self._cloud_call("update", _id)
        return self._update(_id, olds, news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        self._cloud_call("delete", _id)
        self._delete(_id, props)

    def _create(self, props: dict[str, Any]) -> CreateResult:
        props = _inputs(props)
        self.apply(props, None)
        return CreateResult(self.resource_id(props), {**props, **self.observe(props)})

    def _read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        props = _inputs(props)
        return ReadResult(id_, {**props, **self.observe(props)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        olds, news = _inputs(olds), _inputs(news)
        replaces = [k for k in self.replace_keys if olds.get(k) != news.get(k)]
        changed = any(olds.get(k) != v for k, v in news.items())
        # The computed outputs: after a refresh they hold what is really on
        # disk, so drift makes the next up repair the artifact.
        expected = self.expect(news)
        changed = changed or any(olds.get(k) != v for k, v in expected.items())
        return DiffResult(
            changes=changed or bool(replaces),
            replaces=replaces,
            delete_before_replace=bool(replaces),
        )

    def _update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        news = _inputs(news)
        self.apply(news, _inputs(olds))
        return UpdateResult({**news, **self.observe(news)})


# ---------------------------------------------------------------------------
# Git
# ---------------------------------------------------------------------------

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "runner",
    "GIT_AUTHOR_EMAIL": "runner@localhost",
    "GIT_COMMITTER_NAME": "runner",
    "GIT_COMMITTER_EMAIL": "runner@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def _git(path: str, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, **_GIT_ENV}
    proc = subprocess.run(
        ["git", f"--git-dir={path}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {path} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


class BareRepoProvider(_Provider):
    """A bare Git repository with an initial commit (README) on ``main``.

    Inputs: path, service, readme.  Outputs: url, exists, head.
    """

    replace_keys = ("path",)

    def resource_id(self, props):
        return props["path"]

    def observe(self, props):
        path = Path(props["path"])
        head = _fs.MISSING
        if (path / "HEAD").is_file():
            try:
                head = _git(str(path), "rev-parse", "--verify", "refs/heads/main")
            except RuntimeError:
                head = _fs.MISSING
        return {"url": path.as_uri(), "exists": path.is_dir(), "head": head}

    def expect(self, props):
        return {"url": Path(props["path"]).as_uri(), "exists": True}

    def _write_commit(self, repo: str, readme: str) -> str:
        blob = _git(repo, "hash-object", "-w", "--stdin", stdin=readme)
        tree = _git(repo, "mktree", stdin=f"100644 blob {blob}\tREADME.md\n")
        commit = _git(repo, "commit-tree", tree, "-m", "Initial commit")
        _git(repo, "update-ref", "refs/heads/main", commit)
        _git(repo, "symbolic-ref", "HEAD", "refs/heads/main")
        return commit

    def apply(self, props, olds):
        path = Path(props["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (path / "HEAD").is_file():
            subprocess.run(
                ["git", "init", "-q", "--bare", "--initial-branch=main", str(path)],
                check=True,
                capture_output=True,
                env={**os.environ, **_GIT_ENV},
            )
        try:
            _git(str(path), "rev-parse", "--verify", "refs/heads/main")
        except RuntimeError:
            # Only an empty repository gets the initial commit: never rewrite history.
            self._write_commit(str(path), props["readme"])

    def diff(self, _id, olds, news):
        olds_i, news_i = _inputs(olds), _inputs(news)
        replaces = [k for k in self.replace_keys if olds_i.get(k) != news_i.get(k)]
        # A repository with pushed history is in sync as long as it exists and
        # has a main branch; only a vanished repository (or main) is drift.
        changed = (
            olds_i.get("service") != news_i.get("service")
            or not olds_i.get("exists", False)
            or olds_i.get("head") in (None, _fs.MISSING)
        )
        return DiffResult(changes=changed or bool(replaces), replaces=replaces, delete_before_replace=bool(replaces))

    def _delete(self, _id, props):
        shutil.rmtree(props["path"], ignore_errors=True)
        _fs.prune_empty_dirs(Path(props["path"]).parent, Path(props["path"]).parent.parent)


# ---------------------------------------------------------------------------
# Account
# ---------------------------------------------------------------------------


class AccountDirProvider(_Provider):
    """A tenant's account directory (mode 0700) with ``account.json``.

    Inputs: path, tenant_id, account_id.  Outputs: exists, mode, recorded_account_id.
    """

    replace_keys = ("path",)

    def resource_id(self, props):
        return props["account_id"]

    def _document(self, props) -> dict:
        return {"account_id": props["account_id"], "tenant": props["tenant_id"]}

    def observe(self, props):
        path = Path(props["path"])
        recorded = _fs.MISSING
        try:
            recorded = json.loads((path / "account.json").read_text())["account_id"]
        except (OSError, ValueError, KeyError):
            pass
        mode = oct(path.stat().st_mode & 0o777) if path.is_dir() else _fs.MISSING
        return {"exists": path.is_dir(), "mode": mode, "recorded_account_id": recorded}

    def expect(self, props):
        return {"exists": True, "mode": "0o700", "recorded_account_id": props["account_id"]}

    def apply(self, props, olds):
        path = Path(props["path"])
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        (path / "account.json").write_text(json.dumps(self._document(props), indent=2) + "\n")

    def _delete(self, _id, props):
        # The account directory is the tenant's, shared by its environments:
        # when two of them are destroyed at once (sync --prune), the other
        # environment's destroy may remove parts of it, or all of it, while
        # this one walks it (ENOENT). Gone is what a delete wants: look again.
        path = Path(props["path"])
        for attempt in range(5):
            try:
                return self._delete_account(path)
            except FileNotFoundError:
                if not path.exists():
                    return
                if attempt == 4:
                    raise

    @staticmethod
    def _delete_account(path: Path) -> None:
        if not path.is_dir():
            return
        for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if sub.is_dir() and not sub.is_symlink():
                try:
                    sub.rmdir()
                except OSError:
                    pass
        leftovers = [p for p in path.iterdir() if p.name != "account.json"]
        if leftovers:
            # Retained data (a database kept on destroy) still lives here:
            # keep the account (and its account.json) around it.
            return
        shutil.rmtree(path)


# ---------------------------------------------------------------------------
# Backend database (SQLite + migrations)
# ---------------------------------------------------------------------------


class MigrationError(Exception):
    pass


def _applied_versions(path: Path) -> list[str]:
    if not path.is_file():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [r[0] for r in rows]


def apply_migrations(path: Path, migrations: list[dict[str, str]]) -> list[str]:
    """Apply ``migrations`` ({version, file, checksum, sql}) in order, each once,
    each in its own transaction. Returns the versions applied now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None)
    applied_now: list[str] = []
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations(version TEXT PRIMARY KEY, checksum TEXT, applied_at TEXT)"
        )
        done = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
        for mig in sorted(migrations, key=lambda m: m["file"]):
            version = mig["version"]
            if version in done:
                if done[version] != mig["checksum"]:
                    raise MigrationError(
                        f"migration {mig['file']} was changed after it was applied "
                        f"(checksum {done[version][:12]} in the database, {mig['checksum'][:12]} now)"
                    )
                continue
            try:
                # executescript runs the file's statements; the explicit BEGIN
                # keeps them and the bookkeeping row in one transaction.
                conn.executescript("BEGIN;\n" + mig["sql"])
                conn.execute(
                    "INSERT INTO schema_migrations(version, checksum, applied_at) VALUES (?, ?, ?)",
                    (version, mig["checksum"], datetime.now(UTC).isoformat()),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise MigrationError(f"migration {mig['file']} failed: {exc}") from None
            applied_now.append(version)
    finally:
        conn.close()
    return applied_now


class DatabaseProvider(_Provider):
    """A SQLite database with the backend's migrations applied.

    Inputs: path, migrations [{version, file, checksum, sql}], purge_data.
    Outputs: exists, applied (list of versions), schema_version.

    ``delete`` keeps the database file unless ``purge_data`` was true at the
    last up (the value in the state is what counts).
    """

    replace_keys = ("path",)

    def resource_id(self, props):
        return props["path"]

    def observe(self, props):
        path = Path(props["path"])
        applied = _applied_versions(path)
        return {
            "exists": path.is_file(),
            "applied": applied,
            "schema_version": applied[-1] if applied else "",
        }

    def expect(self, props):
        versions = sorted(m["version"] for m in props["migrations"])
        return {"exists": True, "applied": versions, "schema_version": versions[-1] if versions else ""}

    def apply(self, props, olds):
        apply_migrations(Path(props["path"]), props["migrations"])

    def _delete(self, _id, props):
        if not props.get("purge_data"):
            return
        path = Path(props["path"])
        for p in (path, path.with_name(path.name + "-journal"), path.with_name(path.name + "-wal")):
            if p.exists():
                p.unlink()
        _fs.prune_empty_dirs(path.parent, path.parent.parent.parent)


# ---------------------------------------------------------------------------
# Versioned releases with a `current` link (backend app, frontend site)
# ---------------------------------------------------------------------------


#: The backend release's environment file (secrets for the app, mode 0600).
ENV_FILE = "backend.env"


def render_files(templates: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    return {name: string.Template(text).safe_substitute(values) for name, text in templates.items()}


class ReleaseProvider(_Provider):
    """``<base>/releases/<app_version>/`` holding rendered files, and
    ``<base>/current`` pointing at it. Old release directories are kept
    (they are what a rollback switches back to).

    Inputs: base, app_version, templates {name: text}, values {key: str},
    env {NAME: value} (optional, secret: written to ``backend.env``, mode 0600,
    kept out of ``content_hash`` so no digest of a secret reaches the state).
    Outputs: release_dir, current, content_hash, env_file (``ok`` when the
    file holds exactly ``env`` with mode 0600, else what is wrong).
    """

    replace_keys = ("base",)

    def resource_id(self, props):
        return props["base"]

    def _files(self, props) -> dict[str, str]:
        return render_files(props["templates"], props["values"])

    @staticmethod
    def _env_text(props) -> str:
        return "".join(f"{k}={v}\n" for k, v in sorted((props.get("env") or {}).items()))

    def _env_state(self, props, release_dir: Path) -> str:
        path = release_dir / ENV_FILE
        if not props.get("env"):
            return "" if not path.exists() else "unexpected"
        if not path.is_file():
            return _fs.MISSING
        if path.stat().st_mode & 0o777 != 0o600:
            return f"mode {oct(path.stat().st_mode & 0o777)}"
        return "ok" if path.read_text(encoding="utf-8") == self._env_text(props) else "changed"

    def observe(self, props):
        base = Path(props["base"])
        release_dir = base / "releases" / props["app_version"]
        return {
            "release_dir": str(release_dir),
            "current": _fs.current_target(base),
            "content_hash": _fs.hash_dir(release_dir, skip=(ENV_FILE,)),
            "env_file": self._env_state(props, release_dir),
        }

    def expect(self, props):
        base = Path(props["base"])
        return {
            "release_dir": str(base / "releases" / props["app_version"]),
            "current": f"releases/{props['app_version']}",
            "content_hash": _fs.hash_files(self._files(props)),
            "env_file": "ok" if props.get("env") else "",
        }

    def apply(self, props, olds):
        base = Path(props["base"])
        release_rel = f"releases/{_fs.release_dir_name(props['app_version'])}"
        # never replace anything outside this target's own releases/ folder
        _fs.write_files(
            base / release_rel,
            self._files(props),
            within=base / "releases",
            private={ENV_FILE: self._env_text(props)} if props.get("env") else None,
        )
        _fs.point_current(base, release_rel)

    def _delete(self, _id, props):
        base = Path(props["base"])
        shutil.rmtree(base / "releases", ignore_errors=True)
        link = base / "current"
        if link.is_symlink():
            link.unlink()
        _fs.prune_empty_dirs(base, base.parent.parent)


class CachePurgeProvider(_Provider):
    """Records a CDN cache purge: appends ``<timestamp> release=... `` to a log
    each time the site it follows changes (``trigger``). The log is
    append-only history, so ``read`` reports the state as recorded.

    Inputs: log_path, release, app_version, trigger.  Outputs: purged_at.
    """

    replace_keys = ("log_path",)

    def resource_id(self, props):
        return props["log_path"]

    def observe(self, props):
        return {}

    def expect(self, props):
        return {}

    def _read(self, id_, props):
        return ReadResult(id_, _inputs(props))

    def _purge(self, props) -> str:
        now = datetime.now(UTC).isoformat()
        log = Path(props["log_path"])
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(
                f"{now} release={props['release']} app_version={props['app_version']} content={props['trigger'][:12]}\n"
            )
        return now

    def apply(self, props, olds):  # pragma: no cover - create/update below
        self._purge(props)

    def _create(self, props):
        props = _inputs(props)
        return CreateResult(props["log_path"], {**props, "purged_at": self._purge(props)})

    def _update(self, _id, olds, news):
        news = _inputs(news)
        return UpdateResult({**news, "purged_at": self._purge(news)})

    def diff(self, _id, olds, news):
        olds, news = _inputs(olds), _inputs(news)
        replaces = [k for k in self.replace_keys if olds.get(k) != news.get(k)]
        changed = any(olds.get(k) != news.get(k) for k in ("release", "app_version", "trigger"))
        return DiffResult(changes=changed or bool(replaces), replaces=replaces, delete_before_replace=bool(replaces))

    def _delete(self, _id, props):
        log = Path(props["log_path"])
        if log.exists():
            log.unlink()
        _fs.prune_empty_dirs(log.parent, log.parent.parent.parent)
