"""One target's operation in its own process (``python -m runner.worker``).

The orchestrator starts one worker per target with a clean environment (see
``engine.worker_environment``) and a work area of its own, so concurrent
targets share no process-global state or workspace files (pulumi/pulumi#8186,
#6052). The request and the answer are the typed messages of runner.protocol.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
from pathlib import Path

from runner import engine, recovery
from runner.protocol import WorkerRequest, WorkerResult, die_with_parent, session_processes


class HolderRecorder:
    """Records the processes this worker starts (the engine holds the stack's lock
    under its own pid) with their start times, host, PID namespace and boot, so
    that recovery can later prove a lock's holder dead (runner.recovery). Removed
    at the end.

    The CLI, which takes the lock tens of ms after it starts, is a child of the
    worker's main thread (the Automation API starts it from the thread that runs
    the operation): while no such child runs, that thread's children are read
    every 5 ms (one small file). While one runs, the recorder sleeps on its pidfd
    (woken when it exits) and walks the whole tree every 100 ms for the plugins
    below it, recorded so recovery can end them (one started since the last walk
    carries the worker's mark, recovery.WORKER_MARK). Walking the tree every 5 ms cost
    ~0.3 CPU-s per second of engine time: a file per thread of every engine
    process, and a wake-up costs ~0.1 ms here (#17)."""

    INTERVAL_S = 0.005
    TREE_S = 0.1

    def __init__(self, directory: Path, stack: str, own: tuple[int, ...] = ()):
        self.directory, self.stack, self.pids = directory, stack, {}
        self.own = own  # the worker's own children (its provider server): recorded, but not the CLI
        self.path = recovery.write_holder_record(directory, stack, {})
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._writing = threading.Lock()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            running = [pid for pid in self._record(_thread_children(self._pid)) if pid not in self.own]
            if not running:
                self._stop.wait(self.INTERVAL_S)
                continue
            fds = []
            for pid in running:
                try:
                    fds.append(os.pidfd_open(pid))
                except OSError:  # exited meanwhile
                    pass
            try:
                if fds:
                    select.select(fds, [], [], self.TREE_S)
            finally:
                for fd in fds:
                    os.close(fd)
            self._record(descendants(self._pid))

    def _record(self, found: list[int]) -> list[int]:
        """Record the processes of `found` not recorded yet; return those running (not zombies)."""
        running = {pid: t for pid in found if (t := recovery.start_time(pid)) is not None}
        new = {pid: t for pid, t in running.items() if self.pids.get(pid) != t}
        if new:
            self.pids.update(new)  # never forget one: a dead engine's lock is proven by this record
            with self._writing:
                if not self._stop.is_set():
                    try:
                        recovery.write_holder_record(self.directory, self.stack, self.pids)
                    except OSError:
                        pass
        return list(running)

    def close(self) -> None:
        """Stop and remove the record, without waiting for the poller (the result is not delayed)."""
        with self._writing:
            self._stop.set()
            self.path.unlink(missing_ok=True)


_answers = sys.stdout  # the pipe to the orchestrator; main() points sys.stdout at the log


def _emit(kind: str, **data) -> None:
    _answers.write(json.dumps({"type": kind, **data}) + "\n")
    _answers.flush()


def run(job: WorkerRequest) -> WorkerResult:
    settings = engine.EngineSettings(
        bin_dir=Path(job.bin_dir),
        project_dir=Path(job.project_dir),
        backend_url=job.backend_url,
        work_root=Path(job.work_root),
        program_name=job.program_name,
    )
    secrets = sorted((v for v in job.secret_values.values() if v), key=len, reverse=True)

    def log(text: str) -> None:
        """One line of engine output to the target's log (stderr), secret values masked."""
        for value in secrets:
            text = text.replace(value, engine.SECRET_MASK)
        sys.stderr.write(text.rstrip("\n") + "\n")
        sys.stderr.flush()

    # inherited by every process the engine starts: recovery can prove them this worker's
    os.environ[recovery.WORKER_MARK] = recovery.worker_mark(
        recovery.identity()["boot_id"], os.getpid(), recovery.start_time(os.getpid())
    )
    program = engine.inline_program(Path(job.pythonpath)) if job.inline and job.pythonpath else None
    # forked before this process starts any thread or gRPC server; its providers are the program's
    provider = engine.DynamicProvider(settings.program_dir) if program else None
    if provider is not None:
        os.environ.update(provider.env)
    recorder = HolderRecorder(
        recovery.holders_dir(Path(job.work_root)), job.stack, own=(provider.pid,) if provider is not None else ()
    )
    try:
        result = engine.run_operation(
            settings,
            stack=job.stack,
            operation=job.operation,
            config=dict(job.config),
            secret_values=dict(job.secret_values),
            on_progress=lambda data: _emit("progress", **data),
            remove_stack=job.remove_stack,
            refresh=job.refresh,
            log=log,
            pythonpath=job.pythonpath,
            plan=job.plan,
            review=job.review,
            program=program,
        )
    except engine.EngineError as exc:
        log(f"[{exc.kind}] {exc.message}" + (f" ({exc.urn})" if exc.urn else ""))
        return WorkerResult(ok=False, error=exc.to_dict())
    finally:
        recorder.close()
        if provider is not None:
            provider.close()
    return WorkerResult(
        ok=True,
        changes=result.changes,
        outputs=result.outputs,
        steps=[s.to_dict() for s in result.steps if s.op not in ("same", "read")],
        drift=[s.to_dict() for s in result.drift],
        pending=[s.to_dict() for s in result.pending],
        behind=[s.to_dict() for s in result.behind],
        state_version=result.state_version,
    )


_interrupted: list[int] = []  # the stop signals received so far


def _others_in_session() -> list[int]:
    """The processes of this worker's session but itself: the engine's CLI and its plugins."""
    return [pid for pid in session_processes(os.getsid(0)) if pid != os.getpid()]


def _stop_engine(signum, frame) -> None:
    """Stop the engine gracefully, exactly once: `pulumi` cancels on its first
    SIGINT (no new steps, in-flight steps finish, lock released) but a second
    SIGINT makes it quit at once, which leaves the lock and pending operations.

    The worker leads its own session and process group; the engine's CLI is in
    that group (its plugins in groups of their own). SIGINT is the orchestrator's
    interrupt (WorkerProcess.interrupt) sent to the whole group: the CLI got that
    very signal, so nothing is forwarded. SIGTERM is someone asking this worker
    alone (or the orchestrator's death, see main): the group gets its SIGINT
    then, unless it had one already."""
    _interrupted.append(signum)
    if signum != signal.SIGTERM or _interrupted.count(signal.SIGINT) or _interrupted.count(signal.SIGTERM) > 1:
        return
    os.killpg(os.getpgrp(), signal.SIGINT)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_engine)
    signal.signal(signal.SIGINT, _stop_engine)
    # A runner killed outright (kill -9) cannot stop its workers, which lead sessions of their
    # own: the kernel sends a SIGTERM then, so the engine cancels instead of running on unobserved.
    die_with_parent(signal.SIGTERM)
    request = WorkerRequest.from_json(sys.stdin.read())
    global _answers
    _answers, sys.stdout = sys.stdout, sys.stderr  # what an inline program prints goes to the log
    try:
        message = run(request).to_message()
        _emit(message.pop("type"), **message)
    finally:  # the target is done: nothing of it keeps running (a plugin the engine left, listening)
        for pid in _others_in_session():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return 0


def _thread_children(tid: int) -> list[int]:
    """The children one thread started (its main thread's for a process's pid)."""
    try:
        return [int(c) for c in Path(f"/proc/{tid}/task/{tid}/children").read_text().split()]
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """The children of `pid` (every thread's), from /proc (Linux)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every descendant of `pid`, children first, from /proc (Linux). Signals go
    to sessions and groups instead (runner.protocol)."""
    found, queue = [], [pid]
    while queue:
        for child in children(queue.pop()):
            found.append(child)
            queue.append(child)
    return found


if __name__ == "__main__":
    sys.exit(main())
