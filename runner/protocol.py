"""The pipe between the orchestrator and a worker, typed on both sides.

The orchestrator (runner.fleet) sends one :class:`WorkerRequest` as JSON on
the worker's stdin (it holds the resolved secret values, which therefore never
appear on a command line or in the environment); the worker (runner.worker)
answers with JSON lines on stdout: ``progress`` events while running and one
final ``result`` (:class:`WorkerResult`). Engine output goes to stderr, which
the orchestrator writes to the target's log file. Both sides import this
module, so a field added here is added to both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from signal import SIGINT, SIGKILL
from typing import IO, Any


@dataclass(frozen=True)
class WorkerRequest:
    """One target's operation, as the worker runs it."""

    bin_dir: str
    project_dir: str  # the program's tree (another commit's worktree for a rollback)
    backend_url: str
    work_root: str
    stack: str
    operation: str  # the engine operation: up | preview | refresh | destroy | drift | recover | outputs
    config: Mapping[str, Any] = field(default_factory=dict)
    secret_values: Mapping[str, str] = field(default_factory=dict)
    program_name: str = "program"
    remove_stack: bool = False  # destroy: also remove the stack (offboarding)
    refresh: bool = False  # up: refresh first (after a recovery)
    pythonpath: str | None = None  # the program's own tree first (stacks/, components/)
    plan: str | None = None  # review flow (#20): the update plan file to save or apply
    review: Mapping[str, Any] | None = None  # review flow: what the preview saw
    inline: bool = True  # run the program in the worker (engine.inline_program), not in a language host

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerRequest:
        return cls(**json.loads(text))


@dataclass
class WorkerResult:
    """The worker's answer: the engine's outcome, or the classified error."""

    ok: bool
    error: dict[str, Any] | None = None  # EngineError.to_dict(): kind, message, urn, component
    changes: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    behind: list[dict[str, Any]] = field(default_factory=list)
    state_version: str | None = None

    def to_message(self) -> dict[str, Any]:
        return {"type": "result", **asdict(self)}

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> WorkerResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in message.items() if k in names})


class WorkerProcess:
    """A started worker: write the request, read its messages, wait for it.

    The one place that starts a worker process. Each worker leads a session of
    its own: the engine's CLI runs in the worker's process group, and the
    engine starts its plugins (language host, providers) in groups of their
    own, but all stay in the worker's session, so "every process of the
    session" is what a target leaves behind. The orchestrator signals a worker
    only through :meth:`interrupt` (first Ctrl-C) and :meth:`end_session`
    (second Ctrl-C); :meth:`wait` ends whatever the target left running."""

    COMMAND = (sys.executable, "-P", "-m", "runner.worker")

    def __init__(self, request: WorkerRequest, *, env: Mapping[str, str], cwd: Path, log: IO[bytes]):
        self._request = request
        if warm_workers() and type(self).COMMAND == WorkerProcess.COMMAND:
            from runner import pool

            stdin_r, stdin_w = os.pipe()
            stdout_r, stdout_w = os.pipe()
            try:
                # the parent imports the project's program before it forks (an older commit's is
                # imported by its worker)
                preload = request.pythonpath if request.inline and request.program_name == "program" else None
                self.pid, self._exited = pool.spawn(
                    env=env, cwd=cwd, stdin=stdin_r, stdout=stdout_w, stderr=log.fileno(), program=preload
                )
            finally:
                os.close(stdin_r)
                os.close(stdout_w)
            self._stdin, self._stdout = open(stdin_w, "w"), open(stdout_r)
            self._proc = None
        else:
            self._proc = subprocess.Popen(
                list(self.COMMAND),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=dict(env),
                cwd=cwd,
                text=True,
                start_new_session=True,
            )
            self.pid = self._proc.pid  # also its process group's and its session's id
            self._stdin, self._stdout = self._proc.stdin, self._proc.stdout

    def messages(self) -> Iterator[dict[str, Any]]:
        """Send the request, then yield each message the worker writes, in order."""
        try:
            self._stdin.write(self._request.to_json())
            self._stdin.close()
        except BrokenPipeError:  # it died before reading: its exit status tells
            pass
        with self._stdout:
            for line in self._stdout:
                yield json.loads(line)

    def signal(self, sig: int) -> None:
        """Send `sig` to the worker's process group: the worker and the engine's CLI."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def interrupt(self) -> None:
        """Cancel gracefully: the engine's CLI gets exactly one SIGINT (no new
        steps, in-flight steps finish, the lock is released), as from a Ctrl-C
        at a terminal; the worker notes it and forwards nothing."""
        self.signal(SIGINT)

    def end_session(self, sig: int = SIGKILL) -> list[int]:
        """Send `sig` to every process left in the worker's session (plugins
        included, whatever their group); returns their pids."""
        return end_session(self.pid, sig)

    def wait(self) -> int:
        """Wait for the worker to exit and every process its target left to end.
        The worker is reaped only after that, so its pid (the session's id) cannot
        be reused by another process meanwhile."""
        if self._proc is None:  # the warm parent ends the session, then reaps and tells
            return self._exited.result()
        if self._proc.returncode is None:
            try:
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:  # reaped already
                pass
        self.end_session()
        return self._proc.wait()

    @property
    def returncode(self) -> int | None:
        if self._proc is None:
            return self._exited.result() if self._exited.done() else None
        return self._proc.returncode


def inline_programs() -> bool:
    """Workers run the program inline (engine.inline_program) unless RUNNER_INLINE_PROGRAM=0,
    which has the engine start the language host on Pulumi.yaml's `main` (what the plain CLI does)."""
    return os.environ.get("RUNNER_INLINE_PROGRAM", "1") != "0"


def warm_workers() -> bool:
    """Workers are forked from a warm parent (runner.pool) unless RUNNER_WARM_WORKERS=0,
    which starts each as a new interpreter (what a test that replaces the worker uses)."""
    return os.environ.get("RUNNER_WARM_WORKERS", "1") != "0"


#: prctl(2) option: the signal this process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> None:
    """Have the kernel send this process `sig` when its parent dies (at once
    when the parent died before the request took effect)."""
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def end_session(sid: int, sig: int = SIGKILL) -> list[int]:
    """Send `sig` to every live process of session `sid`; returns their pids."""
    pids = session_processes(sid)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def session_processes(sid: int) -> list[int]:
    """The live (non-zombie) processes of session `sid`, from /proc (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:  # exited meanwhile
            continue
        state, _ppid, _pgrp, session = stat[stat.rindex(b")") + 2 :].split()[:4]
        if int(session) == sid and state != b"Z":
            found.append(int(entry))
    return found
