"""The one seam to the Pulumi engine.

Every call into ``pulumi.automation`` and every environment variable given to
the engine goes through this module. Callers get typed results
(:class:`OperationResult`) and typed errors (:class:`LockedError`,
:class:`StackNotFound`, :class:`OperationFailed` with the resource URN and the
component that raised it); nothing above this module reads CLI text.

It runs inside one worker process per target (``runner.worker``), whose
environment the orchestrator built with :func:`worker_environment`: only that
target's settings, credentials and passphrase.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib
import json
import os
import re
import secrets as _secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from runner.problems import UsageProblem
from runner.protocol import die_with_parent

PROJECT = "runner"
SECRET_MASK = "[secret]"
STACK_REFERENCE = "pulumi:pulumi:StackReference"

# Offline by default (DESIGN.md, "The engine").
OFFLINE_ENV = {
    "PULUMI_SKIP_UPDATE_CHECK": "true",
    "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    "PULUMI_DISABLE_REGISTRY_RESOLVE": "true",
    "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
}


def backend_env(backend_url: str) -> dict[str, str]:
    """Engine settings a backend needs. postgres://: the DIY backend lists stacks
    with up to 10 parallel ListPaged calls, each holding a cursor while it reads
    each key's metadata on another connection of a pool of 2 x GOMAXPROCS: on 2
    cores four cursors take every connection and `pulumi stack ls` waits forever
    (pkg/v3 backend/diy/postgres/bucket.go, seen with 3.260.0). One listing at a
    time needs two connections."""
    if backend_url.startswith(("postgres://", "postgresql://")):
        return {"PULUMI_DIY_BACKEND_PARALLEL": "1"}
    return {}


# Variables a worker inherits from the runner's own environment, no others.
INHERITED_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME")


class EngineError(Exception):
    """An operation did not succeed; ``kind`` is locked, not-found, checkpoint, transient or failed."""

    kind = "failed"

    def __init__(self, message: str, *, urn: str | None = None, component: str | None = None):
        super().__init__(message)
        self.message = message
        self.urn = urn
        self.component = component

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "urn": self.urn, "component": self.component}


class LockedError(EngineError):
    kind = "locked"


class StackNotFound(EngineError):
    kind = "not-found"


class OperationFailed(EngineError):
    kind = "failed"


class StalePlan(EngineError):
    """up --plans: the stack moved since the reviewed preview; nothing was applied."""

    kind = "failed"


class TransientError(EngineError):
    """Throttling, a rate limit, a timeout or a reset connection: the same
    operation may succeed when tried again (the plan retries these, #17)."""

    kind = "transient"


class CheckpointUnreadable(EngineError):
    """The backend's checkpoint of the stack cannot be read (e.g. after a kill mid-write)."""

    kind = "checkpoint"


@dataclass(frozen=True)
class Step:
    """One resource step the engine reported (planned or applied)."""

    urn: str
    op: str
    keys: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]

    @property
    def component(self) -> str | None:
        return component_of(self.urn)

    @property
    def type(self) -> str:
        parts = self.urn.split("::")
        return parts[2].rsplit("$", 1)[-1] if len(parts) >= 4 else ""

    def to_dict(self) -> dict[str, Any]:
        return {"urn": self.urn, "name": self.name, "component": self.component, "op": self.op, "keys": list(self.keys)}


@dataclass
class OperationResult:
    changes: dict[str, int] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    # drift only: steps of the refresh preview (reality vs state) and of the preview (program vs state)
    drift: list[Step] = field(default_factory=list)
    pending: list[Step] = field(default_factory=list)
    # drift only: references to other stacks (shared) whose outputs changed: not this stack's drift
    behind: list[Step] = field(default_factory=list)
    # preview with a saved plan: the state's version the preview saw (review flow, #20)
    state_version: str | None = None


@dataclass(frozen=True)
class EngineSettings:
    """Where the engine, the project and the state are; passed to every worker."""

    bin_dir: Path
    project_dir: Path  # holds Pulumi.yaml and the program (stacks/)
    backend_url: str
    work_root: Path  # per-target work areas live below it
    program_name: str = "program"  # another name for an older commit's program (rollback)

    def work_area(self, stack: str) -> Path:
        return self.work_root / stack

    @property
    def program_dir(self) -> Path:
        """The engine's work dir: a generated Pulumi.yaml that points at the
        project's program, with the stack config files beside it (stacks/)."""
        return self.work_root.parent / self.program_name


def prepare_program_dir(settings: EngineSettings) -> Path:
    """Write the generated Pulumi.yaml (absolute program and virtualenv paths,
    `stackConfigDir: stacks`). With the default state dir this is
    .runner/program, the project Pulumi.yaml's own stackConfigDir, so the plain
    `pulumi` CLI in the project directory sees the same stack config."""
    from ruamel.yaml import YAML

    yaml = YAML()
    project = yaml.load(settings.project_dir / "Pulumi.yaml")
    project["main"] = str((settings.project_dir / project.get("main", ".")).resolve())
    project["stackConfigDir"] = "stacks"
    # `secret: true` is enforced by the registry validation (a plaintext value is refused) and
    # registry secrets are set as Pulumi secrets. The engine's copy drops the flag: Pulumi >= 3.202
    # refuses a declared-secret key left at its (plaintext) default, i.e. every stack without that
    # secret, `shared` included (pulumi/pulumi#21865).
    for spec in (project.get("config") or {}).values():
        if isinstance(spec, dict) and "secret" in spec:
            del spec["secret"]
    target = settings.program_dir / "Pulumi.yaml"
    config_dir = settings.work_root.parent / "program" / "stacks"  # one stack config for every program
    config_dir.mkdir(parents=True, exist_ok=True)
    if settings.program_name != "program" and not (settings.program_dir / "stacks").exists():
        settings.program_dir.mkdir(parents=True, exist_ok=True)
        try:  # drift and rollback jobs of one commit prepare its program dir concurrently
            (settings.program_dir / "stacks").symlink_to(config_dir)
        except FileExistsError:
            pass
    from io import StringIO

    buffer = StringIO()
    yaml.dump(project, buffer)
    if not target.exists() or target.read_text() != buffer.getvalue():
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(buffer.getvalue())
        tmp.replace(target)
    return settings.program_dir


# --------------------------------------------------------------------------- inline program

#: The packages of the project's program (stacks/ and components/).
PROGRAM_PACKAGES = ("stacks", "components")
_inline: tuple[tuple, Callable[[], Any]] | None = None  # (the sources it was imported from, the program)


def _program_sources(project_dir: Path) -> tuple:
    """What decides whether an imported program is still the one on disk: its
    directory and each module's path, size and modification time."""
    files = []
    for folder in PROGRAM_PACKAGES:
        for path in (project_dir / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                stat = path.stat()
                files.append((str(path), stat.st_size, stat.st_mtime_ns))
    return (str(project_dir), *sorted(files))


def inline_program(project_dir: Path) -> Callable[[], Any] | None:
    """The project's program (`stacks.program.main`, what Pulumi.yaml's `main`
    runs) as an Automation API inline program: the engine runs it in this
    process instead of starting the language host and a new interpreter that
    imports pulumi and the components again (#17). Same code, so the same
    resources, names and URNs: the plain `pulumi` CLI still sees no change.

    Imported once per process (the warm parent imports it before it forks the
    workers) and again when its sources changed on disk; `project_dir` (the
    project, or an older commit's worktree) goes first on sys.path, so the
    dynamic providers the program pickles by reference are the ones its
    PYTHONPATH gives the provider processes. None when it cannot be imported:
    the engine then runs it the usual way and reports the error itself."""
    global _inline
    project_dir = project_dir.resolve()
    try:
        sources = _program_sources(project_dir)
    except OSError:
        return None
    if _inline is not None and _inline[0] == sources:
        return _inline[1]
    _inline = None
    for name in [n for n in sys.modules if n.split(".")[0] in PROGRAM_PACKAGES]:
        del sys.modules[name]
    sys.path[:] = [str(project_dir), *(p for p in sys.path if p != str(project_dir))]
    importlib.invalidate_caches()
    try:
        module = importlib.import_module("stacks.program")
        importlib.import_module("components.local")  # the default platform's components, imported lazily by main
    except Exception:  # noqa: BLE001 - the language host reports it with the program's own traceback
        return None
    if Path(module.__file__).resolve().parent.parent != project_dir:
        return None
    _inline = (sources, module.main)
    return module.main


#: The engine attaches to a provider already listening on a port named here instead of starting
#: its plugin (pkg/resource/plugin/provider_plugin.go; pulumi/pulumi#8979, documented for debugging).
ATTACH_VARIABLE = "PULUMI_DEBUG_PROVIDERS"
DYNAMIC_PROVIDER = "pulumi-python"  # the package of Python dynamic providers


class DynamicProvider:
    """The program's dynamic providers served by a child forked from this warm
    process (#17), for one operation of one stack: the engine attaches to it
    instead of starting `pulumi-resource-pulumi-python`, a new interpreter that
    imports pulumi, dill and the components again (~0.27 CPU-s a stack).

    The child runs what that plugin runs (`python -m pulumi.dynamic`: a gRPC
    server that prints its port), so the providers' code, their config
    (Configure) and their errors reach the engine as before; only the process
    start is saved. It leads its own process group as the engine's plugins
    do (a Ctrl-C reaches the engine, which cancels, not the provider), dies
    with this worker (PR_SET_PDEATHSIG), is in the worker's holder record
    (recovery; a forked child's /proc environ is its warm parent's, so it
    does not show the worker's mark), and is ended by :meth:`close` (the
    engine leaves an attached provider running).
    Fork before any gRPC thread or channel exists in this process.

    `port` is None when the child did not start: the engine then starts the
    plugin itself."""

    def __init__(self, program_dir: Path):
        self.port: int | None = None
        port_r, port_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(port_r)
            self._serve(program_dir, port_w)  # never returns
        os.close(port_w)
        with open(port_r, "rb") as answer:
            line = answer.readline()
        if line.strip().isdigit():
            self.port = int(line)
        else:
            self.close()

    @staticmethod
    def _serve(program_dir: Path, port_w: int) -> None:
        try:
            import runpy
            import signal

            from google.protobuf import empty_pb2
            from pulumi.runtime.proto import provider_pb2_grpc

            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(2, 1)  # not the worker's answer pipe: the target's log
            os.close(devnull)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            die_with_parent(signal.SIGKILL)
            os.chdir(program_dir)  # where the engine starts its plugins
            os.environ["PULUMI_PROJECT"] = PROJECT  # what the engine gives its plugin (Config reads it)

            class PortLine:
                """stdout until the server has printed its port (the plugin protocol), then the log."""

                def write(self, data: bytes | str) -> int:
                    os.write(port_w, data.encode() if isinstance(data, str) else data)
                    os.close(port_w)
                    sys.stdout = sys.stderr
                    return len(data)

                buffer = property(lambda self: self)

                def flush(self) -> None:
                    pass

            sys.stdout = PortLine()
            # An attached provider is sent Attach (the engine's address), which a launched one is not;
            # the dynamic provider does not implement it (it needs nothing from it).
            servicer = provider_pb2_grpc.ResourceProviderServicer
            servicer.Attach = lambda self, request, context: empty_pb2.Empty()
            runpy.run_module("pulumi.dynamic", run_name="__main__", alter_sys=True)
        except BaseException as exc:  # noqa: BLE001 - to the target's log; the engine starts its own plugin
            sys.stderr.write(f"[error] dynamic provider server: {type(exc).__name__}: {exc}\n")
        finally:  # the server serves until it is killed: here only when it could not start
            os._exit(1)

    @property
    def env(self) -> dict[str, str]:
        return {ATTACH_VARIABLE: f"{DYNAMIC_PROVIDER}:{self.port}"} if self.port else {}

    def close(self) -> None:
        import signal

        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)


# --------------------------------------------------------------------------- environment


class PassphraseError(UsageProblem):
    """The master passphrase is configured but unusable (exit 2): never replaced by a new one."""


#: How long a reader waits for another process's master passphrase to appear non-empty.
PASSPHRASE_WAIT = 5.0


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (0700), created if missing."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o700)
        except PermissionError:  # not ours (a shared RUNNER_STATE_DIR): leave it as its owner set it
            pass
    return path


def master_passphrase(state_dir: Path) -> str:
    """RUNNER_PASSPHRASE, RUNNER_PASSPHRASE_FILE, or a generated file under .runner/ (0600).

    A configured passphrase that is empty or missing is an error
    (:class:`PassphraseError`), never a new master: stacks encrypted with the
    old one could no longer be read. The generated file is created
    atomically: written to a private temp file, then linked into place, so
    of concurrent first runs exactly one creator wins and everyone reads its
    complete value."""
    if "RUNNER_PASSPHRASE" in os.environ:
        value = os.environ["RUNNER_PASSPHRASE"]
        if not value.strip():
            raise PassphraseError("RUNNER_PASSPHRASE is set but empty (unset it to use the passphrase file)")
        return value
    if "RUNNER_PASSPHRASE_FILE" in os.environ:
        configured = os.environ["RUNNER_PASSPHRASE_FILE"]
        if not configured.strip():
            raise PassphraseError("RUNNER_PASSPHRASE_FILE is set but empty (unset it to use .runner/passphrase)")
        return _read_passphrase(Path(configured), "RUNNER_PASSPHRASE_FILE ")
    path = private_dir(state_dir) / "passphrase"
    deadline = None
    while True:
        try:
            value = _read_passphrase(path, "")
            if path.stat().st_mode & 0o077:  # left readable by an older runner
                path.chmod(0o600)
            return value
        except FileNotFoundError:
            _create_passphrase(path)
        except PassphraseError:
            # only a pre-existing (or truncated) file can be empty: linking makes creation atomic
            deadline = deadline or time.monotonic() + PASSPHRASE_WAIT
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _read_passphrase(path: Path, label: str) -> str:
    """The stripped content of ``path``; FileNotFoundError only when not configured."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if label:
            raise PassphraseError(
                f"{label}{path} does not exist (refusing to generate a new master "
                "passphrase: existing stacks could no longer be decrypted)"
            ) from None
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise PassphraseError(f"{label}{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not value:
        raise PassphraseError(f"{label}{path} is empty (a passphrase file must hold the master passphrase)")
    return value


def _create_passphrase(path: Path) -> None:
    tmp = path.with_name(f".passphrase.{os.getpid()}.{_secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(_secrets.token_urlsafe(32))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # fails when another process's file is already in place: it wins
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def stack_passphrase(master: str, stack: str) -> str:
    """Each stack's secrets are encrypted with its own key derived from the master passphrase."""
    return hmac.new(master.encode(), f"runner-stack:{stack}".encode(), hashlib.sha256).hexdigest()


def worker_environment(
    settings: EngineSettings,
    stack: str,
    passphrase: str,
    credentials: Mapping[str, str] = (),
    pythonpath: str | None = None,
) -> dict[str, str]:
    """The complete environment of one target's worker and its engine processes."""
    venv_bin = Path(sys.executable).parent
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update(OFFLINE_ENV)
    env.update(
        {
            "PATH": os.pathsep.join([str(settings.bin_dir), str(venv_bin), "/usr/local/bin", "/usr/bin", "/bin"]),
            "PULUMI_HOME": str(settings.work_area(stack) / "home"),
            "PULUMI_BACKEND_URL": settings.backend_url,
            "PULUMI_CONFIG_PASSPHRASE": passphrase,
            "PULUMI_PYTHON_CMD": sys.executable,
            "PYTHONUNBUFFERED": "1",
            "AWS_EC2_METADATA_DISABLED": "true",
            **backend_env(settings.backend_url),
        }
    )
    if pythonpath:  # an older commit's program imports its own components first
        env["PYTHONPATH"] = pythonpath
    env.update(credentials)
    return env


def backend_url_for(value: str | None, state_dir: Path) -> str:
    """`--backend` as given, default a file:// backend under .runner/state."""
    if not value:
        path = private_dir(state_dir / "state")
        return path.resolve().as_uri()
    if value.startswith("file://"):
        Path(value.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    return value


# --------------------------------------------------------------------------- classification


_LOCKED = re.compile(r"the stack is currently locked|currently locked by \d+ lock", re.I)
# A cloud API or the backend asking to slow down or not answering in time. Narrow on purpose: a
# permanent error is never retried, so a bare "timeout" (e.g. a config key's name) is not one.
_TRANSIENT = re.compile(
    r"throttl|rate exceeded|rate limit|too ?many ?requests|request ?limit ?exceeded|slow ?down"
    r"|(?:HTTP|status|code)\W{0,3}(?:429|503)\b|\b(?:429|503) (?:Too Many Requests|Service Unavailable)"
    r"|service unavailable|timed out|i/o timeout|deadline exceeded|\bTimeoutError\b|Read ?Timeout|Connect ?Timeout"
    r"|connection reset|ECONNRESET",
    re.I,
)
_NOT_FOUND = re.compile(r"no stack named '[^']*' found|stack '[^']*' not found", re.I)


def component_of(urn: str | None) -> str | None:
    """The innermost ``runner:*:Class`` component in a URN's type chain."""
    if not urn:
        return None
    parts = urn.split("::")
    types = parts[2].split("$") if len(parts) >= 4 else []
    components = [t for t in types if t.startswith(f"{PROJECT}:")]
    return components[-1] if components else None


class _Collector:
    """Turns engine events into steps, change counts and an attributed error."""

    def __init__(self, on_progress: Callable[[dict], None] | None, log: Callable[[str], None] | None = None):
        self.on_progress = on_progress
        self.log = log
        self.steps: list[Step] = []
        self.changes: dict[str, int] | None = None
        self.errors: list[tuple[str | None, str]] = []
        self.failed_urn: str | None = None
        self.stack_outputs: dict[str, Any] | None = None
        self.compare = "inputs"  # what differs in a step: the inputs (code vs state) or outputs (a refresh)

    def __call__(self, event) -> None:
        if event.prelude_event is not None:  # the engine holds the stack's lock from here on
            self._progress({"phase": "begin"})
        if self.log is not None:
            self._log_event(event)
        if event.diagnostic_event and event.diagnostic_event.severity == "error":
            diag = event.diagnostic_event
            self.errors.append((diag.urn, _clean(diag.message)))
        elif event.res_op_failed_event:
            self.failed_urn = self.failed_urn or event.res_op_failed_event.metadata.urn
        elif event.resource_pre_event:
            meta = event.resource_pre_event.metadata
            op = getattr(meta.op, "value", str(meta.op))
            # every step, unchanged ones too: the live view shows steps done out of those announced
            self._progress({"urn": meta.urn, "op": op, "phase": "start"})
        elif event.res_outputs_event:
            meta = event.res_outputs_event.metadata
            op = getattr(meta.op, "value", str(meta.op))
            if meta.type == "pulumi:pulumi:Stack" and meta.new is not None:
                self.stack_outputs = dict(meta.new.outputs or {})
            self.steps.append(Step(meta.urn, op, _changed_keys(meta, self.compare)))
            self._progress({"urn": meta.urn, "op": op, "phase": "done"})
        elif event.summary_event:  # the engine's last event, before it releases the lock
            self._progress({"phase": "end"})
            self.changes = {
                getattr(k, "value", str(k)): v for k, v in (event.summary_event.resource_changes or {}).items()
            }

    def _log_event(self, event) -> None:
        """The target's log: each diagnostic in full, each resource step, failures, the summary."""
        if event.diagnostic_event:
            diag = event.diagnostic_event
            where = f" {diag.urn}" if diag.urn else ""
            text = re.sub(r"\x1b\[[0-9;]*m|<\{%[a-z]+%\}>", "", diag.message or "").rstrip()
            self.log(f"[diagnostic {diag.severity}]{where}: {text}")
        elif event.res_op_failed_event:
            failed = event.res_op_failed_event
            self.log(f"[failed] {failed.metadata.op} {failed.metadata.urn} (status {failed.status})")
        elif event.res_outputs_event:
            meta = event.res_outputs_event.metadata
            op = getattr(meta.op, "value", str(meta.op))
            keys = f" [{', '.join(meta.diffs or meta.keys or ())}]" if op not in ("same", "read") else ""
            self.log(f"[{op}] {meta.urn}{keys}")
        elif event.summary_event:
            changes = {getattr(k, "value", str(k)): v for k, v in (event.summary_event.resource_changes or {}).items()}
            self.log(f"[summary] {changes}")

    def _progress(self, data: dict) -> None:
        if self.on_progress:
            self.on_progress(data)

    def error(self, fallback: str) -> EngineError:
        # Prefer the diagnostic attached to a resource; the stack-level one repeats it.
        for urn, message in self.errors:
            if urn and component_of(urn):
                return OperationFailed(message, urn=urn, component=component_of(urn))
        urn = self.failed_urn
        for diag_urn, message in self.errors:
            if message and "update failed" not in message:
                return OperationFailed(message, urn=diag_urn or urn, component=component_of(diag_urn or urn))
        return OperationFailed(fallback, urn=urn, component=component_of(urn))


def _changed_keys(meta, compare: str = "inputs") -> tuple[str, ...]:
    """The properties a step changes. The engine's keys/diffs are empty for
    dynamic providers' refresh and preview steps, so compare old and new
    state: the outputs for a refresh (reality vs state), the inputs first for
    a preview (code vs state)."""
    if meta.diffs or meta.keys:
        return tuple(meta.diffs or meta.keys or ())
    if meta.detailed_diff:
        return tuple(sorted(meta.detailed_diff))
    if meta.old is None or meta.new is None:
        return ()
    if meta.type == STACK_REFERENCE:  # which of the referenced stack's outputs changed
        old, new = (meta.old.outputs or {}).get("outputs") or {}, (meta.new.outputs or {}).get("outputs") or {}
        return tuple(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)))
    pairs = [(meta.old.inputs, meta.new.inputs), (meta.old.outputs, meta.new.outputs)]
    if compare == "outputs":
        pairs.reverse()
    for old, new in pairs:
        old, new = old or {}, new or {}
        keys = sorted(k for k in set(old) | set(new) if k != "__provider" and old.get(k) != new.get(k))
        if keys:
            return tuple(keys)
    return ()


def _own_step(step: Step) -> bool:
    """A step of the stack's own resources: not `same`/`read`, not a provider
    (`pulumi:providers:*` default updates follow config) and not a reference to
    another stack (the shared stack's outputs changing is not this stack's drift)."""
    return step.op not in ("same", "read") and not step.type.startswith(("pulumi:providers:", STACK_REFERENCE))


def _reference_changes(steps: list[Step]) -> list[Step]:
    """Stack references whose outputs changed since this stack was deployed."""
    return [s for s in steps if s.type == STACK_REFERENCE and s.keys]


def _clean(message: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m|<\{%[a-z]+%\}>", "", message or "").strip()
    # Keep the first meaningful line of a provider traceback: the exception text.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception)\b", line):
            return line
    return lines[-1] if lines else text


def classify(exc: Exception, collector: _Collector | None = None) -> EngineError:
    """The single place where a CLI failure becomes a typed error (pulumi/pulumi#11108)."""
    from pulumi.automation import errors as auto_errors

    if isinstance(exc, EngineError):
        return exc
    text = f"{getattr(exc, 'stderr', '')}\n{getattr(exc, 'stdout', '')}\n{exc}"
    if isinstance(exc, auto_errors.ConcurrentUpdateError) or _LOCKED.search(text):
        return LockedError("the stack is locked by another operation")
    # create_or_select is `stack select`, then `stack init` when not found: another
    # process (a shard starting at the same time) created the stack in between.
    # A concurrent operation, not a failure: the lock wait retries, and selects it.
    # On a postgres:// backend the race can also surface while `stack init` lists the stacks:
    # a row listed is gone when read (seen with three shards creating `shared` at once).
    if re.search(r"error: stack '[^']*' already exists", text) or re.search(
        r"could not create stack: could not list bucket: .*\(code=NotFound\)", text
    ):
        return LockedError("the stack is being created by another operation")
    if "failed to load checkpoint" in text:
        return CheckpointUnreadable(_clean(_cli_stderr(exc)).removeprefix("error: "))
    if isinstance(exc, auto_errors.StackNotFoundError) or _NOT_FOUND.search(text):
        return StackNotFound("the stack does not exist (never deployed)")
    if collector is not None and (collector.errors or collector.failed_urn):
        error = collector.error(_clean(_cli_stderr(exc)))
    else:
        lines = [text for text in (line.strip() for line in _cli_stderr(exc).splitlines()) if text.startswith("error:")]
        error = OperationFailed(lines[-1].removeprefix("error:").strip() if lines else _clean(_cli_stderr(exc)))
    if _TRANSIENT.search(error.message):
        return TransientError(error.message, urn=error.urn, component=error.component)
    return error


def _cli_stderr(exc: Exception) -> str:
    """The CLI's stderr of a failed command (the SDK's CommandError keeps it only in its text)."""
    text = str(getattr(exc, "stderr", "") or "") or str(exc)
    match = re.search(r"\n stderr: (.*)\Z", text, re.S)
    return (match.group(1) if match and match.group(1).strip() else text).strip()


# --------------------------------------------------------------------------- operations


@functools.cache
def sdk():
    """The Automation API classes the engine runs with, built on its public
    classes only (imported on first use: the orchestrator never loads the SDK).

    - ``Command``: the public ``PulumiCommand`` with a known version. Its
      constructor runs `pulumi version` once per workspace; the bootstrap already
      proved the binary is the pinned version, so ours sets `command` and
      `version` (both public attributes) and runs no process.
    - ``Workspace``: a ``LocalWorkspace`` whose ``select_stack`` runs `stack
      select` only when asked to check that the stack exists: every command
      passes `--stack`, and the CLI reports a missing stack itself; with
      `create`, `stack select --create` creates a missing stack.
    - ``Stack``: a ``Stack`` whose ``outputs()`` and ``info()`` read the
      engine's events instead of running `stack output` twice and `stack
      history` after each operation (secrets arrive masked in the events).

    tests/unit/test_engine_sdk.py pins the SDK behaviour this relies on."""
    from datetime import datetime

    from pulumi import automation as auto
    from pulumi.automation._stack import StackInitMode  # pinned: tests/unit/test_engine_sdk.py
    from semver import VersionInfo

    from runner.bootstrap import PULUMI_VERSION

    class Command(auto.PulumiCommand):
        def __init__(self, bin_dir: Path):  # no super().__init__: it would run `pulumi version`
            self.command = str(bin_dir / "pulumi")
            self.version = VersionInfo.parse(PULUMI_VERSION)

    class Workspace(auto.LocalWorkspace):
        def __init__(self, *args, check_exists: bool = True, create: bool = False, **kwargs):
            super().__init__(*args, **kwargs)
            self.check_exists, self.create = check_exists, create

        def select_stack(self, stack_name: str) -> None:
            if self.create:  # one process where `stack select`, failing, then `stack init` were two (#17)
                env = {"PULUMI_HOME": self.pulumi_home, **self.env_vars}
                self.pulumi_command.run(["stack", "select", "--create", "--stack", stack_name], self.work_dir, env)
            elif self.check_exists:
                super().select_stack(stack_name)

    class Stack(auto.Stack):
        """One CLI process per operation; `mode` as the public factories pass it."""

        Mode = StackInitMode

        def __init__(self, name: str, workspace, collector: _Collector, mode=StackInitMode.SELECT):
            self._collector = collector
            super().__init__(name, workspace, mode)

        def outputs(self):
            outputs = self._collector.stack_outputs
            if outputs is None:  # not in the events (e.g. nothing ran): ask the CLI
                return super().outputs()
            return {
                k: auto.OutputValue(value=_unsecret(v), secret=_unsecret(v) == SECRET_MASK) for k, v in outputs.items()
            }

        def info(self, show_secrets=True):
            now = datetime.now(UTC)
            return auto.UpdateSummary(
                kind="update",
                start_time=now,
                message="",
                environment={},
                config={},
                result="succeeded",
                end_time=now,
                resource_changes=self._collector.changes,
            )

    return SimpleNamespace(Command=Command, Workspace=Workspace, Stack=Stack, auto=auto)


#: The wire protocol's marker of a secret value (a constant of the resource protocol, not of an SDK).
SECRET_SIGNATURE = "4dabf18193072939515e22adb298388d"
_SECRET_VALUE = "1b47061264138c4ac30d75fd1eb44270"


def _unsecret(value):
    """An output value from the engine's events: a secret (the events hold it
    as a signed object with its ciphertext masked) becomes the mask."""
    if isinstance(value, dict):
        if value.get(SECRET_SIGNATURE) == _SECRET_VALUE:
            return SECRET_MASK
        return {k: _unsecret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unsecret(v) for v in value]
    return value


def _workspace(
    settings: EngineSettings,
    stack: str,
    pythonpath: str | None = None,
    *,
    check_exists: bool = True,
    create: bool = False,
):
    (settings.work_area(stack) / "home").mkdir(parents=True, exist_ok=True)
    return sdk().Workspace(
        work_dir=str(settings.program_dir),
        pulumi_home=str(settings.work_area(stack) / "home"),
        pulumi_command=sdk().Command(settings.bin_dir),
        # The program (and its dynamic providers) import stacks/ and components/ from
        # the project being deployed (or an older commit's worktree), not the runner's install.
        env_vars={"PYTHONPATH": pythonpath} if pythonpath else None,
        check_exists=check_exists,
        create=create,
    )


def stack_config_path(settings: EngineSettings, stack: str) -> Path:
    return settings.program_dir / "stacks" / f"Pulumi.{stack}.yaml"


def _write_config(settings: EngineSettings, stack, config: Mapping[str, Any], secret_values: Mapping[str, str]) -> Path:
    """Make the stack's config exactly the registry's; returns a private copy
    of it for this operation (`--config-file`), taken under the lock: two
    runners on one stack (each with its own registry) share the stack file,
    and the engine reads it only once it has started, by when the other
    runner may have written its own config there.

    Plain values are written to the stack file directly (no CLI call); a
    secret goes through `pulumi config set --secret` with its value on stdin,
    never on a command line, and only when it changed (an HMAC of each secret,
    keyed with the stack's passphrase, is kept beside the file). Writers of one
    stack hold a file lock and replace the file atomically, so two runners on
    one target never leave a half-written file for the engine to read; an
    unchanged config is not written at all."""
    import fcntl
    from io import StringIO

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")  # the C parser and emitter: ~1 ms, where a round trip cost ~30 ms a target (#17)
    yaml.default_flow_style = False
    path = stack_config_path(settings, stack.name)
    sidecar = path.with_name(f".{path.name}.secrets")
    key = os.environ.get("PULUMI_CONFIG_PASSPHRASE", "").encode()
    digests = {k: hmac.new(key, v.encode(), hashlib.sha256).hexdigest() for k, v in secret_values.items()}
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = yaml.load(path) if path.exists() else None
        old_values = dict((current or {}).get("config") or {})
        try:
            old_digests = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            old_digests = {}
        unchanged = {k for k in secret_values if old_digests.get(k) == digests[k] and f"{PROJECT}:{k}" in old_values}
        wanted = {
            k: v for k, v in (current or {}).items() if k in ("encryptionsalt", "secretsprovider", "encryptedkey")
        }
        values = {f"{PROJECT}:{k}": v for k, v in sorted(config.items())}
        values.update({f"{PROJECT}:{k}": old_values[f"{PROJECT}:{k}"] for k in sorted(unchanged)})
        wanted["config"] = values
        if current != wanted:
            buffer = StringIO()
            yaml.dump(wanted, buffer)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(buffer.getvalue())
            tmp.replace(path)
        for name, value in secret_values.items():
            if name in unchanged:
                continue
            proc = subprocess.run(
                [
                    str(settings.bin_dir / "pulumi"),
                    "config",
                    "set",
                    "--secret",
                    f"{PROJECT}:{name}",
                    "--stack",
                    stack.name,
                    "--non-interactive",
                ],
                input=value,
                text=True,
                capture_output=True,
                cwd=settings.program_dir,
                env={**os.environ, "PULUMI_HOME": stack.workspace.pulumi_home},
            )
            if proc.returncode != 0:
                raise OperationFailed(f"could not set secret config {name!r}: {_clean(proc.stderr)}")
        if digests != old_digests:
            sidecar.write_text(json.dumps(digests))
        snapshot = private_dir(settings.work_area(stack.name) / "config") / f"Pulumi.{stack.name}.{os.getpid()}.yaml"
        snapshot.write_bytes(path.read_bytes())
    return snapshot


def _clear_pending_operations(handle) -> list[Step]:
    """Remove the pending operations an interrupted update left in the state
    (pulumi/pulumi#4265). The local platform's providers create by
    deterministic path and idempotently, so a cleared `creating` is created
    again (or found) by the next up instead of being duplicated; a cleared
    update/delete is corrected by the refresh that the next up runs first."""
    from pulumi.automation import Deployment

    exported = handle.export_stack()
    deployment = dict(exported.deployment or {})
    pending = deployment.get("pending_operations") or []
    if not pending:
        return []
    deployment["pending_operations"] = []
    handle.import_stack(Deployment(version=exported.version, deployment=deployment))
    return [Step(op["resource"]["urn"], f"cleared pending {op.get('type', 'operation')}") for op in pending]


def _masked_outputs(outputs) -> dict[str, Any]:
    return {k: (SECRET_MASK if v.secret else v.value) for k, v in outputs.items()}


def list_stacks(settings: EngineSettings) -> list[str]:
    """The project's stacks in the backend (`pulumi stack ls`); no passphrase needed."""
    home = settings.work_root / "_ls" / "home"
    home.mkdir(parents=True, exist_ok=True)
    workspace = sdk().Workspace(
        work_dir=str(settings.program_dir),
        pulumi_home=str(home),
        pulumi_command=sdk().Command(settings.bin_dir),
        env_vars={
            **OFFLINE_ENV,
            **backend_env(settings.backend_url),
            "PULUMI_BACKEND_URL": settings.backend_url,
            "PULUMI_CONFIG_PASSPHRASE": "",
        },
    )
    try:
        return sorted(s.name.rsplit("/", 1)[-1] for s in workspace.list_stacks())
    except Exception as exc:
        raise classify(exc) from None


def run_operation(
    settings: EngineSettings,
    *,
    stack: str,
    operation: str,
    config: Mapping[str, Any] | None = None,
    secret_values: Mapping[str, str] | None = None,
    on_progress: Callable[[dict], None] | None = None,
    remove_stack: bool = False,
    refresh: bool = False,
    log: Callable[[str], None] | None = None,
    pythonpath: str | None = None,
    plan: str | None = None,
    review: Mapping[str, Any] | None = None,
    program: Callable[[], Any] | None = None,
) -> OperationResult:
    """Run one operation on one stack. Raises an :class:`EngineError`.

    `log` receives the engine's output for the target's log: its stdout lines
    (secrets masked by the engine) and a line per engine event (diagnostics,
    resource steps, failures, the summary); the caller masks secret values.

    Review flow (#20): `plan` is an update plan file: a preview saves it, an up
    applies it (runner.review; the engine's update plans are experimental, so
    PULUMI_EXPERIMENTAL is set for these operations only). `review` (up only)
    holds what the preview saw: `state_version`, and `steps` when the fresh
    preview must match them (see runner.review); a mismatch raises
    :class:`StalePlan` and nothing is applied.

    `program` (see :func:`inline_program`) runs the program in this process for
    the operations that run it (up, preview, drift's preview); without it the
    engine starts the language host on Pulumi.yaml's `main`."""
    from pulumi import automation as auto

    if plan is not None:
        os.environ["PULUMI_EXPERIMENTAL"] = "true"  # this worker process runs this one operation only

    known = "encryptionsalt" in _read_text(stack_config_path(settings, stack))
    snapshot = None
    # `stack select` only to find out whether a preview or up must create the stack; other
    # operations pass --stack, and the CLI itself reports a stack that does not exist
    workspace = _workspace(
        settings,
        stack,
        pythonpath,
        check_exists=operation in ("up", "preview") and not known,
        create=operation == "up" and not known,
    )
    collector = _Collector(on_progress, log)
    Stack = sdk().Stack
    created = False  # a preview of a stack that does not exist yet: removed again afterwards
    try:
        if operation == "preview" and not known:
            try:
                handle = Stack(stack, workspace, collector)
            except auto.StackNotFoundError:
                handle, created = Stack(stack, workspace, collector, Stack.Mode.CREATE), True
        elif operation == "up" and not known:  # first time here: `stack select --create`
            handle = Stack(stack, workspace, collector, Stack.Mode.CREATE_OR_SELECT)
        else:
            handle = Stack(stack, workspace, collector)
        if config is not None and operation in ("up", "preview", "refresh", "drift"):
            snapshot = _write_config(settings, handle, config, secret_values or {})
        result = OperationResult()
        common = {"on_event": collector, "color": "never"}
        if snapshot is not None:
            common["config_file"] = str(snapshot)
        if log is not None:
            common["on_output"] = common["on_error"] = log
        runs = {**common, "program": program}  # the operations that run the program
        if plan is not None and operation == "up" and review is not None:
            _check_review(handle, review, runs, collector)
        if plan is not None and operation == "preview":
            handle.preview(plan=plan, **runs)
            result.state_version = state_version(handle)
        elif operation == "up" and plan is not None and review is not None and review.get("engine_plan", True):
            up = handle.up(show_secrets=False, plan=plan, **runs)
            result.outputs = _masked_outputs(up.outputs)
        elif operation == "up":
            # refresh=True: read reality first, so the update repairs out-of-band changes
            up = handle.up(show_secrets=False, refresh=refresh or None, **runs)
            result.outputs = _masked_outputs(up.outputs)
        elif operation == "preview":
            handle.preview(**runs)
        elif operation == "refresh":
            handle.refresh(show_secrets=False, **common)
        elif operation == "destroy":
            handle.destroy(show_secrets=False, **common)
            if remove_stack:
                workspace.remove_stack(stack)
        elif operation == "drift":
            collector.compare = "outputs"
            handle.preview_refresh(show_secrets=False, **common)
            result.drift = [s for s in collector.steps if _own_step(s)]
            result.behind = _reference_changes(collector.steps)
            collector.steps, collector.compare = [], "inputs"
            handle.preview(**runs)
            result.pending = [s for s in collector.steps if _own_step(s)]
            if not result.behind:
                result.behind = _reference_changes(collector.steps)
        elif operation == "outputs":
            result.outputs = _masked_outputs(handle.outputs())
        elif operation == "recover":
            collector.steps = _clear_pending_operations(handle)
        else:
            raise OperationFailed(f"unknown operation {operation!r}")
    except Exception as exc:  # every engine failure becomes a typed error here, and only here
        if log is not None and not hasattr(exc, "stderr"):  # a CLI failure's stderr is logged already
            log(f"[error] {type(exc).__name__}: {exc}")
        raise classify(exc, collector) from None
    finally:
        if snapshot is not None:
            snapshot.unlink(missing_ok=True)
        if created:  # a preview leaves no empty stack (nor its config) behind
            _remove_new_stack(settings, workspace, stack)
    result.changes = collector.changes or {}
    result.steps = collector.steps
    return result


def state_version(handle) -> str:
    """The version of the stack's state as the backend holds it: a digest of its
    checkpoint (every write, even a no-op update or a refresh, changes its
    manifest time); "none" for a stack without resources. The DIY backend's
    update history numbers every update 0, so it cannot serve."""
    try:
        deployment = dict(handle.export_stack().deployment or {})
    except Exception as exc:
        if "no stack named" in str(exc).lower() or "not found" in str(exc).lower():
            return "none"
        raise
    if not deployment.get("resources"):
        return "none"
    return hashlib.sha256(json.dumps(deployment, sort_keys=True).encode()).hexdigest()[:24]


STALE = "stale plan: state changed since preview (re-run preview)"


def _check_review(handle, review: Mapping[str, Any], common: dict, collector: _Collector) -> None:
    """Before an up of a reviewed plan: the state must be the one the preview saw, and
    (when `review["steps"]` is given) a fresh preview must plan exactly the saved steps."""
    if review.get("stale"):
        raise StalePlan(f"{STALE}: {review['stale']}")
    try:
        now = state_version(handle)
    except Exception:
        now = "unreadable"
    if now != review.get("state_version"):
        raise StalePlan(f"{STALE}: state version {review.get('state_version')} at preview, {now} now")
    if review.get("steps") is not None:
        handle.preview(**common)
        fresh = sorted([s.urn, s.op, sorted(s.keys)] for s in collector.steps if s.op not in ("same", "read"))
        saved = sorted([s["urn"], s["op"], sorted(s.get("keys") or [])] for s in review["steps"])
        if fresh != saved:
            changed = sorted({tuple(x[:2]) for x in fresh} ^ {tuple(x[:2]) for x in saved})
            where = ", ".join(f"{op} {urn.rsplit('::', 1)[-1]}" for urn, op in changed[:5])
            raise StalePlan(
                f"{STALE}: a fresh preview plans other steps than the reviewed ones"
                + (f" ({where})" if where else " (changed keys differ)")
            )
        collector.steps, collector.changes = [], None


def _remove_new_stack(settings: EngineSettings, workspace, stack: str) -> None:
    """Remove a stack that a preview created (it has no resources: `stack rm` without --force)."""
    try:
        workspace.remove_stack(stack)
    except Exception:  # e.g. another runner deployed it meanwhile: it is not ours to remove then
        return
    path = stack_config_path(settings, stack)
    for leftover in (path, path.with_name(f".{path.name}.secrets")):
        leftover.unlink(missing_ok=True)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# --------------------------------------------------------------------------- the plain CLI (#19)


def plain_cli_environment(settings: EngineSettings, stack: str, passphrase: str) -> dict[str, str]:
    """What the plain `pulumi` CLI needs, on top of a user's own environment,
    to work on one stack as the runner's workers do: the stack (PULUMI_STACK,
    the CLI's current stack unless `-s` says otherwise), the backend, that
    stack's passphrase (never the master), the runner's interpreter for the
    language host and dynamic providers, and the offline switches. PATH is
    not in it: see :func:`plain_cli_path`."""
    env = {k: v for k, v in OFFLINE_ENV.items() if k != "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK"}
    env.update(
        {
            "PULUMI_STACK": stack,
            "PULUMI_BACKEND_URL": settings.backend_url,
            "PULUMI_CONFIG_PASSPHRASE": passphrase,
            "PULUMI_PYTHON_CMD": sys.executable,
            "AWS_EC2_METADATA_DISABLED": "true",
            **backend_env(settings.backend_url),
        }
    )
    return env


def plain_cli_path(settings: EngineSettings) -> list[str]:
    """Directories to put first on PATH: the engine's (pulumi, the language
    host, the dynamic-provider script), then the runner's virtualenv."""
    return [str(settings.bin_dir), str(Path(sys.executable).parent)]


def plain_cli_directory(settings: EngineSettings) -> Path:
    """Where `pulumi -s STACK` works as the runner's workers do: the generated
    program directory (absolute `main`, `stackConfigDir: stacks` holding the
    config the runner wrote). Not the project directory: its Pulumi.yaml
    declares `db_password` `secret: true`, and the engine then refuses every
    stack that leaves it at its default ("must be encrypted as it's secret",
    pulumi/pulumi#21865); the generated copy drops the flag, as for the workers."""
    return settings.program_dir.resolve()
