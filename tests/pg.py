"""A throwaway PostgreSQL server for tests (Debian's postgresql packages).

``PostgresServer`` runs ``initdb`` in a temporary directory, starts the server
with ``pg_ctl`` on 127.0.0.1 and a free port (unix socket inside the temporary
directory, trust authentication), and on exit stops it (``pg_ctl stop -m
fast``) and removes the directory.  As root (initdb refuses root), the server
runs as the ``postgres`` system user through ``runuser``.

``postgres_server`` is a session-scoped pytest fixture.  When the server cannot
start it FAILS the tests that need it (it never skips): install the server with
``scripts/ensure-postgres.sh``.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "PostgresError", "find_pg_bindir", "postgres_server"]

_DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresError(RuntimeError):
    pass


def find_pg_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl
    (or $PG_BINDIR when set)."""
    override = os.environ.get("PG_BINDIR")
    if override:  # explicit: use it or fail, never fall back silently
        d = Path(override)
        if all((d / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return d
        raise PostgresError(f"PG_BINDIR={override} holds no initdb/pg_ctl/postgres")
    candidates: list[str] = []

    def version_key(path: str) -> tuple[int, ...]:
        part = Path(path).parent.name
        return tuple(int(x) for x in re.findall(r"\d+", part)) or (0,)

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    for directory in candidates:
        d = Path(directory)
        if all((d / name).is_file() and os.access(d / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return d
    for name in ("pg_ctl",):  # a PATH install (e.g. a non-Debian developer machine)
        found = shutil.which(name)
        if found and shutil.which("initdb"):
            return Path(found).parent
    raise PostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
        "or on PATH: run scripts/ensure-postgres.sh (installs the Debian 'postgresql' package)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory.

    >>> with PostgresServer() as pg:              # doctest: +SKIP
    ...     url = pg.url(pg.create_database("ledger"))
    """

    superuser = "postgres"

    def __init__(self, *, bindir: str | os.PathLike[str] | None = None, dbname: str = "runner_test") -> None:
        self.bindir = Path(bindir) if bindir else find_pg_bindir()
        self.dbname = dbname
        self.port: int | None = None
        self.tmpdir: Path | None = None
        self._as_user: str | None = None
        self._started = False

    # -- process helpers ----------------------------------------------------

    def _cmd(self, *args: str) -> list[str]:
        if self._as_user:
            runuser = shutil.which("runuser")
            if runuser:
                return [runuser, "-u", self._as_user, "--", *args]
            return ["su", "-s", "/bin/sh", self._as_user, "-c", " ".join(_quote(a) for a in args)]
        return list(args)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.tmpdir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = env.get("LC_ALL") or "C.UTF-8"
        proc = subprocess.run(
            self._cmd(*args),
            cwd=self.tmpdir,  # the postgres user cannot enter e.g. /root
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise PostgresError(
                f"{' '.join(args)} failed with exit code {proc.returncode}:\n{proc.stdout}{proc.stderr}"
                + self._log_tail()
            )
        return proc

    def _log_tail(self) -> str:
        if self.tmpdir is None:
            return ""
        log = self.tmpdir / "postgres.log"
        try:
            lines = log.read_text(errors="replace").splitlines()[-30:]
        except OSError:
            return ""
        return "\n--- postgres.log (tail) ---\n" + "\n".join(lines)

    # -- lifecycle ----------------------------------------------------------

    @property
    def datadir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "data"

    @property
    def sockdir(self) -> Path:
        assert self.tmpdir is not None
        return self.tmpdir / "sock"

    def start(self) -> PostgresServer:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="runner-pg-"))
        try:
            self.sockdir.mkdir()
            if os.geteuid() == 0:
                try:
                    pw = pwd.getpwnam("postgres")
                except KeyError as exc:
                    raise PostgresError(
                        "running as root, but there is no 'postgres' system user to run the "
                        "server as (initdb refuses root): run scripts/ensure-postgres.sh"
                    ) from exc
                self._as_user = "postgres"
                for path in (self.tmpdir, self.sockdir):
                    os.chown(path, pw.pw_uid, pw.pw_gid)
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.superuser,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            last_error: Exception | None = None
            for _attempt in range(5):  # the free port may be taken in between
                self.port = _free_port()
                try:
                    self._run(
                        str(self.bindir / "pg_ctl"),
                        "-D",
                        str(self.datadir),
                        "-l",
                        str(self.tmpdir / "postgres.log"),
                        "-w",
                        "-t",
                        "60",
                        "-o",
                        f"-h 127.0.0.1 -p {self.port} -k {self.sockdir} "
                        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                        "-c max_connections=200",
                        "start",
                    )
                    self._started = True
                    break
                except PostgresError as exc:
                    last_error = exc
                    time.sleep(0.2)
            if not self._started:
                raise PostgresError(f"PostgreSQL did not start: {last_error}")
            self.create_database(self.dbname)
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._started and self.tmpdir is not None:
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop", timeout=60)
            except (PostgresError, subprocess.TimeoutExpired):
                try:
                    self._run(
                        str(self.bindir / "pg_ctl"),
                        "-D",
                        str(self.datadir),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                        timeout=30,
                    )
                except (PostgresError, subprocess.TimeoutExpired):
                    pass
            self._started = False
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases ----------------------------------------------------------

    def url(self, dbname: str | None = None) -> str:
        if self.port is None:
            raise PostgresError("the server is not started")
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname or self.dbname}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (lower-case identifier); return the name."""
        if not _DB_NAME_RE.match(name):
            raise ValueError(f"invalid database name {name!r}: use [a-z_][a-z0-9_]*")
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.superuser, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        if not _DB_NAME_RE.match(name):
            raise ValueError(f"invalid database name {name!r}")
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.superuser, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


@pytest.fixture(scope="session")
def postgres_server():
    """A running throwaway PostgreSQL server for the whole session.

    Fails (never skips) when the server cannot start.
    """
    try:
        server = PostgresServer().start()
    except Exception as exc:  # noqa: BLE001 - reported as a test failure
        pytest.fail(
            "could not start the throwaway PostgreSQL server needed by this test "
            f"(run scripts/ensure-postgres.sh to install it): {exc}",
            pytrace=False,
        )
    try:
        yield server
    finally:
        server.stop()
