"""Fleet execution: run a batch of jobs in worker processes, at most `concurrency` at once.

`Fleet` executes what it is given (worker processes, concurrency, waiting for
a locked stack, retrying transient engine errors, signals); the order of work
is the :class:`~runner.plan.RunPlan`'s, the report and the ledger are the
:class:`~runner.run.Run`'s. It never imports click. Programs that start from
the registry call `runner.ops.fleet_run` (see the README, "Using the core from
Python").
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tenacity import (
    RetryError,
    Retrying,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from runner import engine, health, recovery
from runner import report as rpt
from runner.bootstrap import ensure_engine
from runner.names import RELEASE_OPERATIONS, SHARED_STACK
from runner.protocol import WorkerProcess, WorkerRequest, WorkerResult, inline_programs
from runner.registry.errors import SecretError

if TYPE_CHECKING:
    from runner.run import Run

Operation = rpt.Operation
WRITING = (Operation.UP, Operation.ROLLBACK, Operation.REFRESH, Operation.DESTROY)  # they take the stack's lock
DEFAULT_MAX_DESTROY = 5  # stacks one destructive command may destroy unless --max-destroy raises it
DEFAULT_RETRIES = 2  # further attempts of a target whose engine error is transient (#17)


class FleetError(Exception):
    """Bad input discovered before anything ran (exit code 2)."""


@dataclass(frozen=True)
class RunSettings:
    """Every option of a fleet command, with its one default (the CLI passes its options through)."""

    operation: Operation | str
    concurrency: int | str = os.cpu_count() or 2  # or AUTO, resolved by ops once the jobs are known
    on_failure: str = "continue"  # continue | stop | rollback
    max_failures: int | None = None
    lock_timeout: float = 120.0
    retries: int = DEFAULT_RETRIES  # transient engine errors: attempts after the first (#17)
    release: str | None = None
    run_id: str | None = None
    detailed_exitcode: bool = False
    remove_stacks: bool = False  # destroy: also remove the stacks (offboarding)
    remediate: str | None = None  # drift: "up" enforces the code, "refresh" accepts reality
    rerun_failed: str | None = None  # up: only the targets that failed in this run ("last": the newest)
    rollback_to: str | None = None  # rollback: this release instead of the last good one
    ignore_lifecycle: bool = False  # up: deploy even where the lifecycle gates refuse (recorded)
    strategy: str | None = None  # up: "waves" | "all-at-once" (default: waves when the registry has a rollout)
    wave: str | None = None  # up: run this wave only
    skip_unchanged: float | None = None  # up: skip unchanged, drift-clean targets (value: max drift age, s)
    only_stacks: frozenset[str] | None = None  # restrict the selection to these stacks
    plan_only: bool = False  # compute what would run, run nothing (sync --dry-run)
    yes: bool = False  # destructive operations: confirmed on the command line (guard_destroy)
    max_destroy: int = DEFAULT_MAX_DESTROY  # destructive operations: refuse to destroy more stacks
    save_plans: str | None = None  # preview: save update plans, manifest.json, summary.md here (#20)
    plans: str | None = None  # up: apply exactly the plans saved there (#20)
    argv: Sequence[str] = ()
    extra_config: Mapping[str, Any] = field(default_factory=dict)


FleetOptions = RunSettings  # the name the fleet layer used before the two option types became one


@dataclass(frozen=True)
class ProgramTree:
    """Another commit's program (a rollback or drift check of an older release): a git worktree."""

    dir: str
    name: str
    project_dir: str  # the project it was checked out of (relative config paths resolve there)


@dataclass(frozen=True)
class Job:
    """What one worker runs: a target's stack, operation, config and secrets, and how to run it.

    ``details`` holds report data only (why, what it rolls back to, ...): it is
    copied into the target's result; everything the engine or the ledger needs
    is a field of its own."""

    tenant: str | None
    environment: str
    stack: str
    operation: Operation | str
    config: Mapping[str, Any]
    secret_values: Mapping[str, str]
    credentials: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    # how the engine runs it
    refresh: bool = False  # up: refresh first (after a recovery)
    remove_stack: bool = False  # destroy: also remove the stack (offboarding)
    program: ProgramTree | None = None  # another commit's program; None: the project's
    plan_file: str | None = None  # review flow (#20): the update plan to save (preview) or apply (up)
    review: Mapping[str, Any] | None = None  # review flow: what the preview saw
    # what the ledger records of it
    program_commit: str | None = None
    program_fingerprint: str | None = None
    config_fingerprint: str | None = None
    # what happened on the way (also shown in the result's details)
    wave: str | None = None
    recovered: tuple[str, ...] = ()
    repaired: bool = False  # its checkpoint was repaired once already in this attempt


AUTO = "auto"  # --concurrency auto: chosen from the cores, free memory and what the targets wait on
#: A target's memory: bench.fleet measured 240-262 MB of summed RSS per target running (an upper
#: bound: forked workers share pages) and 126-173 MB of PSS at N=50 (#17)
TARGET_RSS_BYTES = 256 * 2**20
IO_BOUND_PER_CORE = 4  # targets that mostly wait on a cloud API run this many per core
#: CPU-bound targets still wait between their processes (gRPC round trips, starts): 1.5 per core
#: filled those gaps (no-change up of 6 tenants on 2 cores: 4.61 s at 2, 4.24 s at 3, 4.18 s at 4; #17)
CPU_BOUND_PER_CORE = 1.5


def auto_concurrency(jobs: list[Job], *, cores: int | None = None, available: int | None = None) -> tuple[int, str]:
    """--concurrency auto: CPU_BOUND_PER_CORE per core, IO_BOUND_PER_CORE when the targets wait on a
    cloud API (the aws platform, or simulated_latency_ms), never more than free memory holds targets
    of TARGET_RSS_BYTES, nor more than the jobs. Returns it and a note saying why."""
    cores = cores or os.cpu_count() or 2
    if available is None:
        available = _memory_available()
    io_bound = any(
        j.config.get("platform") == "aws" or float(j.config.get("simulated_latency_ms") or 0) > 0 for j in jobs
    )
    by_cpu = math.ceil(cores * (IO_BOUND_PER_CORE if io_bound else CPU_BOUND_PER_CORE))
    by_memory = max(1, available // TARGET_RSS_BYTES)
    chosen = max(1, min(by_cpu, by_memory, len(jobs) or 1))
    return chosen, (
        f"--concurrency auto: {chosen} ({cores} cores"
        f" x {f'{IO_BOUND_PER_CORE}: the targets wait on a cloud API' if io_bound else CPU_BOUND_PER_CORE}; "
        f"free memory for {by_memory} targets of {TARGET_RSS_BYTES >> 20} MB; {len(jobs)} targets)"
    )


def _memory_available() -> int:
    """MemAvailable from /proc/meminfo, in bytes (Linux)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("MemAvailable not in /proc/meminfo")


def new_run_id() -> str:
    """The CI system's run id when there is one (so shards share it), else a fresh one."""
    for var in ("RUNNER_RUN_ID", "GITHUB_RUN_ID", "CI_PIPELINE_ID", "BUILDKITE_BUILD_ID", "CIRCLE_WORKFLOW_ID"):
        if value := os.environ.get(var):
            attempt = os.environ.get("GITHUB_RUN_ATTEMPT") if var == "GITHUB_RUN_ID" else None
            return f"{value}.{attempt}" if attempt else value
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def build_jobs(
    targets: Iterable, operation: str, options: RunSettings, resolve_secrets: Callable[[Any], Mapping[str, str]]
) -> list[Job]:
    """Build every job before anything runs: a missing secret stops the run (exit 2)."""
    jobs, problems = [], []
    for target in targets:
        try:
            # outputs reads, recover repairs locks and state: neither deploys config
            secret_values = resolve_secrets(target) if operation not in ("outputs", "recover") else {}
        except SecretError as exc:  # names the tenant and the reference, never a value
            problems.append(str(exc))
            continue
        config = {**target.config, **options.extra_config}
        if options.release:
            config["release"] = options.release
        jobs.append(
            Job(
                target.tenant,
                target.environment,
                target.stack,
                operation,
                config,
                secret_values,
                remove_stack=options.remove_stacks,
            )
        )
    if problems:
        raise FleetError("\n".join(problems))
    return jobs


def not_started(job: Job, reason: str, status: str = rpt.NOT_STARTED) -> rpt.TargetResult:
    """The result of a job that never ran (the plan or an interrupt held it back)."""
    return rpt.TargetResult(
        job.tenant,
        job.environment,
        job.stack,
        job.operation,
        status,
        error=reason,
        details={**job.details, "reason": reason},
    )


def retry_transient(
    attempt: Callable[[], rpt.TargetResult],
    retries: int,
    *,
    stopping: Callable[[], bool] = lambda: False,
    wait=None,
    sleep=None,
) -> rpt.TargetResult:
    """Run ``attempt`` again while its error is transient (throttling, a timeout,
    a reset connection), at most ``retries`` more times, with exponential
    backoff and jitter; any other outcome is final at once. The result says how
    many attempts it took (``attempts``) and, after more than one, each attempt's
    error and times (``details["attempts"]``)."""
    tries: list[dict[str, Any]] = []

    def once() -> rpt.TargetResult:
        result = attempt()
        tries.append(
            {"error": result.error_line or None, "started": rpt.iso(result.started), "ended": rpt.iso(result.ended)}
        )
        return result

    retrying = Retrying(
        retry=retry_if_result(
            lambda r: r.error_kind == rpt.TRANSIENT and r.status in (rpt.FAILED, rpt.ERROR) and not stopping()
        ),
        stop=stop_after_attempt(max(0, retries) + 1),
        wait=wait or wait_exponential_jitter(multiplier=2, max=30),
        retry_error_callback=lambda state: state.outcome.result(),
        **({"sleep": sleep} if sleep is not None else {}),
    )
    result = retrying(once)
    result.attempts = len(tries)
    if len(tries) > 1:
        result.details["attempts"] = tries
    return result


class Progress:
    """Receives what happens; the CLI plugs in a live view or plain lines.
    A context manager: entered for the run (a live view starts and stops)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def started(self, job: Job) -> None: ...
    def event(self, job: Job, data: dict) -> None: ...
    def finished(self, result: rpt.TargetResult) -> None: ...
    def note(self, message: str) -> None: ...


class StartPolicy(Protocol):
    """What a batch asks before each job starts and tells after each finishes (the RunPlan)."""

    def may_start(self, job: Job) -> str | None: ...  # None, or why it must not start
    def finished(self, job: Job, result: rpt.TargetResult) -> list[Job]: ...  # follow-ups to run at once


class Fleet:
    """Executes batches of jobs: one worker process per target, at most
    `concurrency` at once; a locked stack is waited for, a transient error
    retried; SIGINT/SIGTERM stop the workers gracefully."""

    def __init__(
        self,
        project_dir: Path,
        *,
        state_dir: Path | None = None,
        backend: str | None = None,
        progress: Progress | None = None,
        bin_dir: Path | None = None,
    ):
        self.project_dir = project_dir.resolve()
        self.state_dir = engine.private_dir((state_dir or self.project_dir / ".runner").resolve())
        # before the engine is touched: an unusable passphrase is a usage error (exit 2)
        self.master = engine.master_passphrase(self.state_dir)
        self.settings = engine.EngineSettings(
            bin_dir=bin_dir or ensure_engine(),
            project_dir=self.project_dir,
            backend_url=engine.backend_url_for(backend, self.state_dir),
            work_root=self.state_dir / "work",
        )
        engine.prepare_program_dir(self.settings)
        self.progress = progress or Progress()
        self._procs: dict[int, WorkerProcess] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @classmethod
    def open(cls, project_dir: str | Path = ".", **kwargs) -> Fleet:
        return cls(Path(project_dir), **kwargs)

    def log_dir(self, run_id: str) -> Path:
        return self.state_dir / "logs" / run_id

    # ------------------------------------------------------------------ a batch

    def run_batch(self, jobs: Sequence[Job], run: Run, policy: StartPolicy | None = None) -> list[rpt.TargetResult]:
        """Run the jobs, at most `concurrency` at once. Each asks `policy` before it
        starts and tells it how it ended; the follow-up jobs the policy answers
        run at once. Returns the results in job order (a follow-up right after
        its cause), whatever order they finished in."""

        def attempt(job: Job) -> rpt.TargetResult:
            try:
                return self.run_target(job, run)
            except Exception as exc:  # noqa: BLE001 - one target's unexpected error never aborts the others
                return rpt.TargetResult(
                    job.tenant,
                    job.environment,
                    job.stack,
                    job.operation,
                    rpt.FAILED,
                    ended=rpt.now(),
                    error=f"runner error: {type(exc).__name__}: {exc}",
                )

        def one(job: Job) -> list[rpt.TargetResult]:
            reason = (
                "the run was interrupted"
                if self._stopping.is_set()
                else (policy.may_start(job) if policy is not None else None)
            )
            if reason:
                result = not_started(job, reason)
                run.log(result)
            else:
                result = attempt(job)
            follow_ups = policy.finished(job, result) if policy is not None else []
            # e.g. a rollback of a failed target: at once, in this slot; never after an interrupt
            return [result, *(attempt(j) for j in follow_ups if not self._stopping.is_set())]

        if not jobs:
            return []
        concurrency = run.settings.concurrency
        if concurrency == AUTO:
            concurrency, why = auto_concurrency(list(jobs))
            if why not in run.report.notes:
                run.report.notes.append(why)
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return [r for rows in pool.map(one, jobs) for r in rows]

    def run_target(self, job: Job, run: Run) -> rpt.TargetResult:
        """One target to its outcome: transient errors retried, a live lock waited for."""
        return retry_transient(
            lambda: self._wait_for_lock(job, run), run.settings.retries, stopping=self._stopping.is_set
        )

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # ------------------------------------------------------------------ one target

    def run_job(self, job: Job, run: Run) -> rpt.TargetResult:
        """Run one job in a worker process; returns its result (never raises for engine errors)."""
        started = rpt.now()
        log_dir = self.log_dir(run.run_id)
        holders = recovery.holders_dir(self.settings.work_root)
        recovered = recovery.repair_checkpoint_files(self.settings.backend_url, job.stack, holders_dir=holders)
        if job.operation in WRITING:
            recovered += self._recover_first(job, run)
        elif job.operation == "recover":
            recovered += recovery.remove_dead_locks(self.settings.backend_url, job.stack, holders)
        if recovered:
            job = replace(job, recovered=(*job.recovered, *recovered), refresh=job.operation == "up")
        self.progress.started(job)
        program = job.program  # rollback to another commit
        if program:
            engine.prepare_program_dir(replace(self.settings, project_dir=Path(program.dir), program_name=program.name))
        request = WorkerRequest(
            bin_dir=str(self.settings.bin_dir),
            project_dir=program.dir if program else str(self.settings.project_dir),
            program_name=program.name if program else "program",
            backend_url=self.settings.backend_url,
            work_root=str(self.settings.work_root),
            stack=job.stack,
            operation="up" if job.operation == "rollback" else job.operation,
            config=dict(job.config),
            secret_values=dict(job.secret_values),
            remove_stack=job.remove_stack,
            refresh=job.refresh,
            # the program's own tree first (stacks/, components/); the worker itself keeps the installed runner
            pythonpath=program.dir if program else str(self.settings.project_dir),
            # review flow (#20): the update plan file to save or apply, and what the preview saw
            plan=job.plan_file,
            review=dict(job.review) if job.review is not None else None,
            inline=inline_programs(),
        )
        env = engine.worker_environment(
            self.settings, job.stack, engine.stack_passphrase(self.master, job.stack), job.credentials
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        outcome: WorkerResult | None = None
        # The ledger row starts when the engine holds the stack's lock (its first event), so rows of
        # two runners that waited for each other never overlap; it ends at the engine's summary event,
        # which comes before the engine releases the lock (else when the worker is done).
        op_id, begun, engine_done = None, None, None
        log_path = log_dir / f"{job.stack}.{job.operation}.log"
        with open(log_path, "ab") as log:
            proc = WorkerProcess(request, env=env, cwd=self.project_dir, log=log)
            with self._lock:
                self._procs[proc.pid] = proc
            try:
                for message in proc.messages():
                    if message.pop("type") != "progress":
                        outcome = WorkerResult.from_message(message)
                    elif message.get("phase") == "begin":
                        if begun is None:
                            begun = rpt.now()
                            op_id = run.start(job, started=begun)
                    elif message.get("phase") == "end":  # the engine's summary: it still holds the lock
                        engine_done = engine_done or rpt.now()
                    else:
                        self.progress.event(job, message)
                proc.wait()
                engine_done = engine_done or rpt.now()
            finally:
                with self._lock:
                    self._procs.pop(proc.pid, None)
        if outcome is not None and (outcome.error or {}).get("kind") == "checkpoint" and not job.repaired:
            # the engine cannot read the checkpoint: a kill mid-write; repair once and run again
            repaired = recovery.repair_checkpoint_files(
                self.settings.backend_url, job.stack, stale_after=0, holders_dir=holders
            )
            if repaired:
                run.end(op_id, job, self._result(job, outcome, proc.returncode, started), ended=rpt.now())
                return self.run_job(replace(job, repaired=True, recovered=(*job.recovered, *repaired)), run)
            if any(
                lock["alive"] for lock in recovery.locks(self.settings.backend_url, job.stack, holders)
            ) or recovery.checkpoint_readable(self.settings.backend_url, job.stack):
                # The engine reads the checkpoint before it locks, and the file backend rewrites the
                # `.attrs` sidecar in place: we read while a live holder wrote (it may have finished
                # and unlocked since: the checkpoint reads whole now). Wait as for its lock.
                outcome.error = {
                    **outcome.error,
                    "kind": "locked",
                    "message": "the checkpoint is being written by another operation",
                }
        result = self._result(job, outcome, proc.returncode, started)
        result.details["log"] = str(log_path)  # the engine's output for this target, secrets masked
        if result.error and "(see the target's log)" in result.error:
            result.error = result.error.replace("(see the target's log)", f"(see {log_path})")
        if op_id is None:  # the engine never began (e.g. locked, or failed before the update)
            op_id = run.start(job, started=started)
        run.end(op_id, job, result, ended=engine_done)
        self.progress.finished(result)
        return result

    def _recover_first(self, job: Job, run: Run) -> list[str]:
        """Before a writing operation: remove locks of dead holders on this host and,
        when the target's last operation was interrupted, clear the pending
        operations it left in the state. Returns what was done."""
        done = recovery.remove_dead_locks(
            self.settings.backend_url, job.stack, recovery.holders_dir(self.settings.work_root)
        )
        # `interrupted`: set at the start of each run by ledger.mark_interrupted_runs for rows whose
        # process on this host is dead; a row still running elsewhere belongs to a live operation.
        last = run.history(job.stack, limit=1)
        interrupted = bool(last) and last[0].status == rpt.FAILED and last[0].error == "interrupted"
        if done or interrupted:
            check = self.run_job(replace(job, operation="recover", config={}, secret_values={}), run)
            if check.status not in (rpt.SUCCEEDED, rpt.SKIPPED):
                done.append(f"pending operations not resolved: {check.error_line}")
            done += [f"{s['op']} of {s['name']}" for s in check.details.get("steps", [])]
        return done

    def _result(self, job: Job, outcome: WorkerResult | None, returncode: int, started) -> rpt.TargetResult:
        details = dict(job.details)  # report data only; the run's facts about the job below
        if job.wave:
            details["wave"] = job.wave
        if job.recovered:
            details["recovered"] = list(job.recovered)
        if job.program:
            details["program"] = {"dir": job.program.dir, "name": job.program.name}
        result = rpt.TargetResult(
            tenant=job.tenant,
            environment=job.environment,
            stack=job.stack,
            operation=job.operation,
            status=rpt.SUCCEEDED,
            started=started,
            ended=rpt.now(),
            details=details,
        )
        if outcome is None:
            result.status = rpt.FAILED
            result.error = f"worker exited with code {returncode} without a result (see the target's log)"
            if self._stopping.is_set():
                result.error = f"interrupted: {result.error}"
            return result
        if not outcome.ok:
            error = outcome.error
            result.error_kind = error.get("kind")
            if job.operation == "recover" and error["kind"] == "not-found":
                # a fleet-wide recover meets targets never deployed: nothing to recover there
                result.status, result.error = rpt.SKIPPED, "never deployed: nothing to recover"
                return result
            result.status = (
                rpt.LOCKED if error["kind"] == "locked" else rpt.ERROR if job.operation == "drift" else rpt.FAILED
            )
            result.error, result.error_resource, result.error_component = (
                error["message"],
                error.get("urn"),
                error.get("component"),
            )
            if self._stopping.is_set():  # the engine cancelled on our interrupt: say so
                result.error = f"interrupted: {result.error}"
            return result
        result.changes = outcome.changes
        result.outputs = outcome.outputs
        if job.operation == "drift":
            drift, pending = outcome.drift, outcome.pending
            result.status = {
                (False, False): rpt.IN_SYNC,
                (True, False): rpt.DRIFTED,
                (False, True): rpt.PENDING,
                (True, True): rpt.DRIFTED_PENDING,
            }[(bool(drift), bool(pending))]
            result.details.update(drift=drift, pending=pending)
            behind = [
                *result.details.get("behind", []),
                *({**s, "note": f"{s['name']} stack outputs changed: {', '.join(s['keys'])}"} for s in outcome.behind),
            ]
            if behind:  # not drift of this target: what it has not received yet (shared outputs, newer code)
                result.details["behind"] = behind
        elif outcome.steps:
            result.details["steps"] = outcome.steps
        if outcome.state_version is not None:  # preview --save-plans (#20)
            result.details["state_version"] = outcome.state_version
        if job.operation in RELEASE_OPERATIONS and job.stack != SHARED_STACK:
            self._check_health(result)
        return result

    @staticmethod
    def _check_health(result: rpt.TargetResult) -> None:
        """An unhealthy target counts as failed, with the failing check named."""
        checks = health.run_checks(result.outputs.get("health_checks"))
        result.details["health"] = checks
        if failed := health.first_failure(checks):
            result.status = rpt.FAILED
            result.error = f"health check {failed['name']!r} failed: {failed['message']}"
            result.error_component = "health"

    def _wait_for_lock(self, job: Job, run: Run) -> rpt.TargetResult:
        """A stack locked by a live holder is waited for with backoff, up to --lock-timeout.
        Never `pulumi cancel`: it would delete a live holder's lock too."""
        attempt = self._shared_once if job.stack == SHARED_STACK else self.run_job
        timeout = run.settings.lock_timeout
        retrying = Retrying(
            retry=retry_if_result(lambda r: r.status == rpt.LOCKED and not self._stopping.is_set()),
            wait=wait_exponential_jitter(initial=1, max=10),
            stop=stop_after_delay(timeout),
        )
        try:
            return retrying(attempt, job, run)
        except RetryError as exc:
            result = exc.last_attempt.result()
            result.error = f"still locked by another operation after {timeout:.0f}s"
            if hint := recovery.kept_locks_hint(
                self.settings.backend_url, job.stack, recovery.holders_dir(self.settings.work_root)
            ):
                result.error += f": {hint}"  # a lock not provably dead is kept: say how to clear it by hand
            return result

    def _shared_once(self, job: Job, run: Run) -> rpt.TargetResult:
        """The shared stack is updated once per run: when shards start together,
        one updates it and the others wait for its lock, then find it done."""
        me = (socket.gethostname(), os.getpid())
        rows = [row for row in run.operations() if row.stack == SHARED_STACK and row.operation == "up"]
        if any(row.status == rpt.SUCCEEDED for row in rows):
            return rpt.TargetResult(
                None,
                SHARED_STACK,
                SHARED_STACK,
                "up",
                rpt.SUCCEEDED,
                details={"reason": "updated by another shard of this run"},
            )
        if any(row.status == "running" and (row.host, row.pid) != me for row in rows):
            # another shard is updating it right now: wait as for a lock, then find it done
            return rpt.TargetResult(
                None, SHARED_STACK, SHARED_STACK, "up", rpt.LOCKED, error="being updated by another shard of this run"
            )
        return self.run_job(job, run)

    # ------------------------------------------------------------------ interrupts

    @contextlib.contextmanager
    def interruptible(self, report: rpt.Report):
        """While inside: SIGINT/SIGTERM mark the report interrupted, start no new
        target and stop the running engines (a second signal kills them)."""
        previous = self._install_signal_handlers(report)
        try:
            yield self
        finally:
            for sig, old in (previous or {}).items():
                signal.signal(sig, old)

    def _install_signal_handlers(self, report: rpt.Report):
        if threading.current_thread() is not threading.main_thread():
            return None
        hits = {"n": 0}

        def handler(signum, frame):
            hits["n"] += 1
            report.interrupted = True
            self._stopping.set()
            if hits["n"] == 1:
                self.progress.note("interrupted: starting no new targets; stopping running engines (again to kill)")
                self._signal_workers(first=True)
            else:
                self._signal_workers(first=False)

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _signal_workers(self, *, first: bool) -> None:
        """First interrupt: each engine cancels gracefully; again: every process of each target ends."""
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            proc.interrupt() if first else proc.end_session()
