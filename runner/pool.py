"""A warm parent for workers (#17): one process that has imported the worker,
the Automation API and the project's program (engine.inline_program) once,
and forks one child per target.

Each child is what ``python -m runner.worker`` was: one process per target,
leading its own session, with its own environment (engine.worker_environment:
replaced whole after the fork) and cwd, the request on its stdin pipe, its
answer on its stdout pipe, stderr to the target's log. The pipes' ends are
passed to the parent over a Unix socket (SCM_RIGHTS); the environment, which
holds the stack's passphrase, goes over that socket too, never on a command
line. The parent holds no secret of its own, starts no thread and opens no
gRPC channel before forking (gRPC and fork() do not mix), reaps each child
after ending what the child's session left running, and tells the
orchestrator the exit status. It exits with the orchestrator (end of file on
the socket), after asking its running children to cancel (SIGTERM: the worker
gives its engine one SIGINT).

Orchestrator side: :func:`spawn` (used by runner.protocol.WorkerProcess).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path

from runner.protocol import end_session

#: Variables the warm parent keeps from the orchestrator's environment (no secrets).
PARENT_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PATH")
_MAX_MESSAGE = 1 << 20


# --------------------------------------------------------------------------- orchestrator side


class _Client:
    """The orchestrator's connection to one warm parent."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {k: os.environ[k] for k in PARENT_ENV if k in os.environ}
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "runner.pool", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        theirs.close()
        self.sock = ours
        self._sending = threading.Lock()
        self._started: dict[int, Future] = {}
        self._exited: dict[int, Future] = {}
        self._futures = threading.Lock()
        self._next = 0
        self.alive = True
        threading.Thread(target=self._read, name="runner-pool", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(_MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            with self._futures:
                if "started" in message:
                    self._started.pop(message["id"]).set_result(message["started"])
                else:
                    self._exited.setdefault(message["pid"], Future()).set_result(message["status"])
        self.alive = False
        with self._futures:  # the parent is gone: nothing pending will be answered
            for future in [*self._started.values(), *self._exited.values()]:
                if not future.done():
                    future.set_exception(RuntimeError("the warm worker parent exited"))

    def spawn(self, *, env: Mapping[str, str], cwd: Path, fds: tuple[int, int, int], program: str | None) -> int:
        with self._futures:
            self._next += 1
            ident, started = self._next, Future()
            self._started[ident] = started
        payload = json.dumps({"id": ident, "env": dict(env), "cwd": str(cwd), "program": program}).encode()
        with self._sending:
            socket.send_fds(self.sock, [payload], list(fds))
        return started.result()

    def exit_status(self, pid: int) -> Future:
        with self._futures:
            return self._exited.setdefault(pid, Future())


_client: _Client | None = None
_client_lock = threading.Lock()


@atexit.register
def _shutdown() -> None:
    """When the orchestrator exits: the warm parent sees end of file and exits once its children have;
    wait for it, so no process of the run outlives the runner (and its CPU counts in the runner's)."""
    client = _client
    if client is None:
        return
    try:
        client.sock.shutdown(socket.SHUT_RDWR)
        client.proc.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass


def spawn(
    *, env: Mapping[str, str], cwd: Path, stdin: int, stdout: int, stderr: int, program: str | None = None
) -> tuple[int, Future]:
    """Fork a worker from the warm parent (started on first use); returns its pid
    and a future of its exit status (a negative signal number when killed).
    `program`: the project directory whose program the parent imports before
    forking (engine.inline_program; again only when its sources changed)."""
    global _client
    with _client_lock:
        if _client is None or not _client.alive or _client.proc.poll() is not None:
            _client = _Client()
        client = _client
    pid = client.spawn(env=env, cwd=cwd, fds=(stdin, stdout, stderr), program=program)
    return pid, client.exit_status(pid)


# --------------------------------------------------------------------------- the warm parent


def _child(message: dict, fds: list[int], ready: int) -> None:
    """In the forked child: become the target's worker. Never returns."""
    code = 1
    try:
        os.setsid()
        os.close(ready)  # the parent answers "started" only now: the pid is a session and group to signal
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the socket, the wakeup pipe, the received fds
        os.chdir(message["cwd"])
        os.environ.clear()
        os.environ.update(message["env"])
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        from runner import worker

        code = worker.main()
    except BaseException as exc:  # noqa: BLE001 - reported in the target's log, then the exit status
        try:
            sys.stderr.write(f"[error] worker: {type(exc).__name__}: {exc}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - stderr itself is broken: the status says it
            pass
    finally:
        os._exit(code)


def serve(sock: socket.socket) -> None:
    import ruamel.yaml  # noqa: F401  the worker's stack config (~40 ms a target when imported there)

    from runner import engine, worker  # noqa: F401  the point of this process: imported once, before forking

    engine.sdk()  # pulumi.automation and the engine's classes (no thread, channel or server is created)
    _freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the orchestrator's to handle
    children: set[int] = set()
    imported = None  # the program imported (and frozen) last
    closing = False
    while children or not closing:
        ready, _, _ = select.select([wake_r] + ([] if closing else [sock]), [], [])
        if sock in ready:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 3)
            except OSError:
                data, fds = b"", []
            if not data:  # the orchestrator is gone: its targets cancel gracefully
                closing = True
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                continue
            message = json.loads(data)
            if message.get("program"):
                program = engine.inline_program(Path(message["program"]))
                if program is not None and program is not imported:  # the first import, or its sources changed
                    imported = program
                    _freeze()
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                _child(message, fds, ready_w)
            os.close(ready_w)
            os.read(ready_r, 1)  # end of file once the child leads its session (or died)
            os.close(ready_r)
            for fd in fds:
                os.close(fd)
            children.add(pid)
            _send(sock, {"id": message["id"], "started": pid})
        if wake_r in ready:
            os.read(wake_r, 4096)
        for pid in list(children):
            try:
                exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                exited = None
            if exited is None:
                continue
            end_session(pid)  # before reaping: the pid, the session's id, cannot be reused meanwhile
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            _send(sock, {"pid": pid, "status": os.waitstatus_to_exitcode(status)})


def _freeze() -> None:
    """Move what this parent imported out of the collector's reach: a child's
    full collection would otherwise touch every object, copying the pages it
    shares with this parent (gc.freeze is meant for this: before fork)."""
    gc.collect()
    gc.freeze()


def _send(sock: socket.socket, message: dict) -> None:
    try:
        sock.send(json.dumps(message).encode())
    except OSError:  # the orchestrator is gone
        pass


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
