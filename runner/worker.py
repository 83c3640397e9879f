"""One target's operation in its own process (``python -m runner.worker``).

The orchestrator starts one worker per target with a clean environment (see
``engine.worker_environment``) and a work area of its own, so concurrent
targets share no process-global state or workspace files (pulumi/pulumi#8186,
#6052). The job arrives as one JSON document on stdin (it holds the resolved
secret values, which therefore never appear on a command line or in the
environment); the worker answers with JSON lines on stdout: ``progress``
events while running and one final ``result``. Engine output goes to stderr,
which the orchestrator writes to the target's log file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from runner import engine


def _emit(kind: str, **data) -> None:
    sys.stdout.write(json.dumps({"type": kind, **data}) + "\n")
    sys.stdout.flush()


def run(job: dict) -> dict:
    settings = engine.EngineSettings(
        bin_dir=Path(job["bin_dir"]), project_dir=Path(job["project_dir"]),
        backend_url=job["backend_url"], work_root=Path(job["work_root"]),
        program_name=job.get("program_name", "program"),
    )
    secrets = sorted((v for v in (job.get("secret_values") or {}).values() if v), key=len, reverse=True)

    def log(text: str) -> None:
        """One line of engine output to the target's log (stderr), secret values masked."""
        for value in secrets:
            text = text.replace(value, engine.SECRET_MASK)
        sys.stderr.write(text.rstrip("\n") + "\n")
        sys.stderr.flush()

    try:
        result = engine.run_operation(
            settings, stack=job["stack"], operation=job["operation"],
            config=job.get("config"), secret_values=job.get("secret_values"),
            on_progress=lambda data: _emit("progress", **data),
            remove_stack=job.get("remove_stack", False), refresh=job.get("refresh", False), log=log,
            pythonpath=job.get("pythonpath"), plan=job.get("plan"), review=job.get("review"),
        )
    except engine.EngineError as exc:
        log(f"[{exc.kind}] {exc.message}" + (f" ({exc.urn})" if exc.urn else ""))
        return {"ok": False, "error": exc.to_dict()}
    return {
        "ok": True,
        "changes": result.changes,
        "outputs": result.outputs,
        "steps": [s.to_dict() for s in result.steps if s.op not in ("same", "read")],
        "drift": [s.to_dict() for s in result.drift],
        "pending": [s.to_dict() for s in result.pending],
        "behind": [s.to_dict() for s in result.behind],
        "state_version": result.state_version,
    }


def _stop_engine(signum, frame) -> None:
    """The orchestrator sends one SIGTERM on interrupt: ask the engine to stop
    gracefully (SIGINT makes `pulumi` cancel and release its lock)."""
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass


def main() -> int:
    signal.signal(signal.SIGTERM, _stop_engine)
    job = json.loads(sys.stdin.read())
    _emit("result", **run(job))
    return 0


def descendants(pid: int) -> list[int]:
    """Every descendant of `pid`, children first, from /proc (Linux)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                queue.append(child)
    return found


if __name__ == "__main__":
    sys.exit(main())
