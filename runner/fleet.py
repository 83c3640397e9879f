"""Fleet operations: fan jobs out to worker processes, at most `concurrency` at once.

`Fleet.run` takes plain jobs and returns a :class:`~runner.report.Report`; it
never imports click. Programs that start from the registry call
`runner.ops.fleet_run` (see the README, "Using the core from Python").
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_exponential_jitter

from runner import engine, health, recovery
from runner import report as rpt
from runner.bootstrap import ensure_engine
from runner.registry.errors import SecretError
from runner.protocol import WorkerProcess, WorkerRequest, WorkerResult

SHARED_STACK = "shared"
WRITING = ("up", "rollback", "refresh", "destroy")  # operations that take the stack's lock


class FleetError(Exception):
    """Bad input discovered before anything ran (exit code 2)."""


@dataclass(frozen=True)
class FleetOptions:
    operation: str
    concurrency: int = os.cpu_count() or 2
    on_failure: str = "continue"  # continue | stop | rollback
    max_failures: int | None = None
    lock_timeout: float = 120.0
    release: str | None = None
    run_id: str | None = None
    with_shared: bool | None = None  # default: only `up` deploys the shared stack first
    remove_stacks: bool = False  # destroy: also remove the stacks (offboarding)
    extra_config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """What one worker runs: a target's stack, operation, config and secrets."""

    tenant: str | None
    environment: str
    stack: str
    operation: str
    config: Mapping[str, Any]
    secret_values: Mapping[str, str]
    credentials: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)


def new_run_id() -> str:
    """The CI system's run id when there is one (so shards share it), else a fresh one."""
    for var in ("RUNNER_RUN_ID", "GITHUB_RUN_ID", "CI_PIPELINE_ID", "BUILDKITE_BUILD_ID", "CIRCLE_WORKFLOW_ID"):
        if value := os.environ.get(var):
            attempt = os.environ.get("GITHUB_RUN_ATTEMPT") if var == "GITHUB_RUN_ID" else None
            return f"{value}.{attempt}" if attempt else value
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def build_jobs(targets: Iterable, operation: str, options: FleetOptions,
           resolve_secrets: Callable[[Any], Mapping[str, str]]) -> list[Job]:
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
        jobs.append(Job(target.tenant, target.environment, target.stack, operation, config, secret_values))
    if problems:
        raise FleetError("\n".join(problems))
    return jobs


class Progress:
    """Receives what happens; the CLI plugs in a live view or plain lines."""

    def started(self, job: Job) -> None: ...
    def event(self, job: Job, data: dict) -> None: ...
    def finished(self, result: rpt.TargetResult) -> None: ...
    def note(self, message: str) -> None: ...


class Fleet:
    def __init__(self, project_dir: Path, *, state_dir: Path | None = None, backend: str | None = None,
                 ledger=None, progress: Progress | None = None, bin_dir: Path | None = None):
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
        self.ledger = ledger
        self.progress = progress or Progress()
        self._procs: dict[int, WorkerProcess] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.ledger_errors: list[str] = []  # moved into the report's notes/errors by `run`

    @classmethod
    def open(cls, project_dir: str | Path = ".", **kwargs) -> "Fleet":
        return cls(Path(project_dir), **kwargs)

    # ------------------------------------------------------------------ one target

    def run_job(self, job: Job, run_id: str, log_dir: Path, *, release: str | None = None) -> rpt.TargetResult:
        """Run one job in a worker process; returns its result (never raises for engine errors)."""
        started = rpt.now()
        holders = recovery.holders_dir(self.settings.work_root)
        recovered = recovery.repair_checkpoint_files(self.settings.backend_url, job.stack, holders_dir=holders)
        if job.operation in WRITING:
            recovered += self._recover_first(job, run_id, log_dir)
        elif job.operation == "recover":
            recovered += recovery.remove_dead_locks(self.settings.backend_url, job.stack, holders)
        if recovered:
            job = replace(job, details={**job.details, "recovered": recovered, "refresh": job.operation == "up"})
        self.progress.started(job)
        program = job.details.get("program")  # rollback to another commit: {"dir", "name"}
        if program:
            engine.prepare_program_dir(replace(self.settings, project_dir=Path(program["dir"]),
                                               program_name=program["name"]))
        request = WorkerRequest(
            bin_dir=str(self.settings.bin_dir),
            project_dir=program["dir"] if program else str(self.settings.project_dir),
            program_name=program["name"] if program else "program",
            backend_url=self.settings.backend_url, work_root=str(self.settings.work_root),
            stack=job.stack, operation="up" if job.operation == "rollback" else job.operation,
            config=dict(job.config), secret_values=dict(job.secret_values),
            remove_stack=job.details.get("remove_stack", False), refresh=job.details.get("refresh", False),
            # the program's own tree first (stacks/, components/); the worker itself keeps the installed runner
            pythonpath=program["dir"] if program else str(self.settings.project_dir),
            # review flow (#20): the update plan file to save or apply, and what the preview saw
            plan=job.details.get("plan_file"), review=job.details.get("review"),
        )
        env = engine.worker_environment(
            self.settings, job.stack, engine.stack_passphrase(self.master, job.stack), job.credentials)
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
                            op_id = self._ledger_start(run_id, job, release, started=begun)
                    elif message.get("phase") == "end":  # the engine's summary: it still holds the lock
                        engine_done = engine_done or rpt.now()
                    else:
                        self.progress.event(job, message)
                proc.wait()
                engine_done = engine_done or rpt.now()
            finally:
                with self._lock:
                    self._procs.pop(proc.pid, None)
        if outcome is not None and (outcome.error or {}).get("kind") == "checkpoint" and not job.details.get("repaired"):
            # the engine cannot read the checkpoint: a kill mid-write; repair once and run again
            repaired = recovery.repair_checkpoint_files(self.settings.backend_url, job.stack, stale_after=0,
                                                        holders_dir=holders)
            if repaired:
                self._ledger_end(op_id, self._result(job, outcome, proc.returncode, started), ended=rpt.now())
                return self.run_job(replace(job, details={**job.details, "repaired": True,
                                                          "recovered": [*recovered, *repaired]}),
                                    run_id, log_dir, release=release)
            if any(lock["alive"] for lock in recovery.locks(self.settings.backend_url, job.stack, holders)):
                # The engine reads the checkpoint before it locks, and the file backend rewrites the
                # `.attrs` sidecar in place: we read while a live holder wrote. Wait as for its lock.
                outcome.error = {**outcome.error, "kind": "locked",
                                    "message": "the checkpoint is being written by another operation"}
        result = self._result(job, outcome, proc.returncode, started)
        result.details["log"] = str(log_path)  # the engine's output for this target, secrets masked
        if result.error and "(see the target's log)" in result.error:
            result.error = result.error.replace("(see the target's log)", f"(see {log_path})")
        if op_id is None:  # the engine never began (e.g. locked, or failed before the update)
            op_id = self._ledger_start(run_id, job, release, started=started)
        self._ledger_end(op_id, result, ended=engine_done)
        self.progress.finished(result)
        return result

    def _recover_first(self, job: Job, run_id: str, log_dir: Path) -> list[str]:
        """Before a writing operation: remove locks of dead holders on this host and,
        when the target's last operation was interrupted, clear the pending
        operations it left in the state. Returns what was done."""
        done = recovery.remove_dead_locks(self.settings.backend_url, job.stack,
                                          recovery.holders_dir(self.settings.work_root))
        # `interrupted`: set at the start of each run by ledger.mark_interrupted_runs for rows whose
        # process on this host is dead; a row still running elsewhere belongs to a live operation.
        last = self._ledger_call(f"reading the history of {job.stack}", self.ledger.history, job.stack, limit=1,
                                 default=[]) if self.ledger is not None else []
        interrupted = bool(last) and last[0].status == rpt.FAILED and last[0].error == "interrupted"
        if done or interrupted:
            check = self.run_job(replace(job, operation="recover", config={}, secret_values={}), run_id, log_dir)
            if check.status not in (rpt.SUCCEEDED, rpt.SKIPPED):
                done.append(f"pending operations not resolved: {check.error_line}")
            done += [f"{s['op']} of {s['name']}" for s in check.details.get("steps", [])]
        return done

    def _result(self, job: Job, outcome: WorkerResult | None, returncode: int, started) -> rpt.TargetResult:
        result = rpt.TargetResult(
            tenant=job.tenant, environment=job.environment, stack=job.stack, operation=job.operation,
            status=rpt.SUCCEEDED, started=started, ended=rpt.now(), details=dict(job.details),
        )
        if outcome is None:
            result.status = rpt.FAILED
            result.error = f"worker exited with code {returncode} without a result (see the target's log)"
            if self._stopping.is_set():
                result.error = f"interrupted: {result.error}"
            return result
        if not outcome.ok:
            error = outcome.error
            if job.operation == "recover" and error["kind"] == "not-found":
                # a fleet-wide recover meets targets never deployed: nothing to recover there
                result.status, result.error = rpt.SKIPPED, "never deployed: nothing to recover"
                return result
            result.status = (rpt.LOCKED if error["kind"] == "locked"
                             else rpt.ERROR if job.operation == "drift" else rpt.FAILED)
            result.error, result.error_resource, result.error_component = (
                error["message"], error["urn"], error["component"])
            if self._stopping.is_set():  # the engine cancelled on our interrupt: say so
                result.error = f"interrupted: {result.error}"
            return result
        result.changes = outcome.changes
        result.outputs = outcome.outputs
        if job.operation == "drift":
            drift, pending = outcome.drift, outcome.pending
            result.status = {(False, False): rpt.IN_SYNC, (True, False): rpt.DRIFTED,
                             (False, True): rpt.PENDING, (True, True): rpt.DRIFTED_PENDING}[(bool(drift), bool(pending))]
            result.details.update(drift=drift, pending=pending)
            behind = [*result.details.get("behind", []), *({**s, "note": f"{s['name']} stack outputs changed: "
                                                             f"{', '.join(s['keys'])}"} for s in outcome.behind)]
            if behind:  # not drift of this target: what it has not received yet (shared outputs, newer code)
                result.details["behind"] = behind
        elif outcome.steps:
            result.details["steps"] = outcome.steps
        if outcome.state_version is not None:  # preview --save-plans (#20)
            result.details["state_version"] = outcome.state_version
        if job.operation in ("up", "rollback") and job.stack != SHARED_STACK:
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

    def _run_with_lock_wait(self, job: Job, run_id: str, log_dir: Path, options: FleetOptions,
                            attempt: Callable[..., rpt.TargetResult] | None = None) -> rpt.TargetResult:
        """A stack locked by a live holder is waited for with backoff, up to --lock-timeout.
        Never `pulumi cancel`: it would delete a live holder's lock too."""
        retrying = Retrying(
            retry=retry_if_result(lambda r: r.status == rpt.LOCKED and not self._stopping.is_set()),
            wait=wait_exponential_jitter(initial=1, max=10), stop=stop_after_delay(options.lock_timeout),
        )
        try:
            return retrying(attempt or self.run_job, job, run_id, log_dir, release=options.release)
        except RetryError as exc:
            result = exc.last_attempt.result()
            result.error = f"still locked by another operation after {options.lock_timeout:.0f}s"
            if hint := recovery.kept_locks_hint(self.settings.backend_url, job.stack,
                                                recovery.holders_dir(self.settings.work_root)):
                result.error += f": {hint}"  # a lock not provably dead is kept: say how to clear it by hand
            return result

    def _run_shared(self, job: Job, run_id: str, log_dir: Path, options: FleetOptions) -> rpt.TargetResult:
        """The shared stack is updated once per run: when shards start together,
        one updates it and the others wait for its lock, then find it done."""

        me = (socket.gethostname(), os.getpid())

        def once(*args, **kwargs) -> rpt.TargetResult:
            rows = [row for row in (self._ledger_call(f"reading this run's {SHARED_STACK} rows", self.ledger.run_operations,
                                                      run_id, default=[]) if self.ledger is not None else [])
                    if row.stack == SHARED_STACK and row.operation == "up"]
            if any(row.status == rpt.SUCCEEDED for row in rows):
                return rpt.TargetResult(None, SHARED_STACK, SHARED_STACK, "up", rpt.SUCCEEDED,
                                        details={"reason": "updated by another shard of this run"})
            if any(row.status == "running" and (row.host, row.pid) != me for row in rows):
                # another shard is updating it right now: wait as for a lock, then find it done
                return rpt.TargetResult(None, SHARED_STACK, SHARED_STACK, "up", rpt.LOCKED,
                                        error="being updated by another shard of this run")
            return self.run_job(*args, **kwargs)

        return self._run_with_lock_wait(job, run_id, log_dir, options, attempt=once)

    # ------------------------------------------------------------------ the fleet

    def shared_job(self, defaults: Mapping[str, Any], options: FleetOptions) -> Job:
        config = {k: v for k, v in defaults.items()}
        if options.release:
            config["release"] = options.release
        return Job(None, SHARED_STACK, SHARED_STACK, "up", config, {})

    def run(self, jobs: list[Job], options: FleetOptions, *, report: rpt.Report | None = None,
            shared: Job | None = None, after_failure=None, schedule=None) -> rpt.Report:
        """Run the jobs, at most `concurrency` at once, honouring the failure policy."""
        run_id = options.run_id or new_run_id()
        report = report or rpt.Report(run_id=run_id, command=options.operation, release=options.release)
        log_dir = self.state_dir / "logs" / run_id
        previous = self._install_signal_handlers(report)
        shared_failed: list[rpt.TargetResult] = []
        pending_shared = [shared] if shared is not None else []

        def batch(some: list[Job]) -> list[rpt.TargetResult]:
            # The shared stack is deployed before the first batch that runs anything: a run whose
            # every target is blocked or skipped leaves `shared` alone.
            if some and pending_shared:
                result = self._run_shared(pending_shared.pop(), run_id, log_dir, options)
                report.shared = result  # shown in the summary; `targets` keeps tenant targets only
                if result.status != rpt.SUCCEEDED:
                    report.add(result)
                    shared_failed.append(result)
            if shared_failed:
                first = shared_failed[0]
                results = []
                for job in some:
                    skipped = self._not_started(job, f"the shared stack {first.status}: {first.error_line}")
                    if first.status == rpt.LOCKED:  # waiting on a lock, not broken: exit 4
                        skipped.status = rpt.LOCKED
                    results.append(report.add(skipped))
                    self._ledger_record(run_id, skipped, options.release)
                return results
            return self.run_batch(some, options, report, log_dir, after_failure)

        try:
            if schedule is None:
                batch(jobs)
            else:  # phases and waves: the caller decides what runs after what
                schedule(batch)
        finally:
            self._restore_signal_handlers(previous)
            self.flush_ledger_errors(report)
            report.ended = rpt.now()
        return report

    def flush_ledger_errors(self, report: rpt.Report) -> None:
        """Ledger failures of this run become notes and run errors of the report (exit 1)."""
        with self._lock:
            errors, self.ledger_errors = self.ledger_errors, []
        report.notes.extend(errors)
        report.errors.extend(errors)

    def run_batch(self, jobs: list[Job], options: FleetOptions, report: rpt.Report, log_dir: Path,
                  after_failure: Callable[[Job, rpt.TargetResult], list[rpt.TargetResult]] | None = None,
                  ) -> list[rpt.TargetResult]:
        failures = 0
        gate = threading.Lock()

        def should_start() -> str | None:
            if self._stopping.is_set():
                return "the run was interrupted"
            if options.on_failure == "stop" and failures:
                return "stopped after a failure (--on-failure stop)"
            if options.max_failures is not None and failures >= options.max_failures:
                return f"stopped after {failures} failure(s) (--max-failures {options.max_failures})"
            return None

        def one(job: Job) -> rpt.TargetResult:
            nonlocal failures
            with gate:
                reason = should_start()
            try:
                if reason:
                    result = self._not_started(job, reason)
                    self._ledger_record(report.run_id, result, options.release)
                else:
                    result = self._run_with_lock_wait(job, report.run_id, log_dir, options)
            except Exception as exc:  # noqa: BLE001 - one target's unexpected error never aborts the others
                result = rpt.TargetResult(job.tenant, job.environment, job.stack, job.operation, rpt.FAILED,
                                          ended=rpt.now(), error=f"runner error: {type(exc).__name__}: {exc}")
            with gate:
                if result.status in (rpt.FAILED, rpt.ERROR):
                    failures += 1
            extra = []
            if after_failure and result.status == rpt.FAILED and not self._stopping.is_set():
                try:
                    extra = after_failure(job, result)
                except Exception as exc:  # noqa: BLE001 - e.g. the ledger unreadable: the run goes on
                    result.details["rollback"] = f"not rolled back: {type(exc).__name__}: {exc}"
            return [result, *extra]

        with ThreadPoolExecutor(max_workers=max(1, options.concurrency)) as pool:
            # in job order, whatever order they finished in; a rollback row follows its failure
            results = [r for rows in pool.map(one, jobs) for r in rows]
        report.targets.extend(results)
        return results

    def _not_started(self, job: Job, reason: str) -> rpt.TargetResult:
        return rpt.TargetResult(job.tenant, job.environment, job.stack, job.operation, rpt.NOT_STARTED,
                                error=reason, details={**job.details, "reason": reason})

    # ------------------------------------------------------------------ interrupts

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

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        for sig, old in (previous or {}).items():
            signal.signal(sig, old)

    def _signal_workers(self, *, first: bool) -> None:
        """First interrupt: each engine cancels gracefully; again: every process of each target ends."""
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            proc.interrupt() if first else proc.end_session()

    # ------------------------------------------------------------------ ledger

    def _ledger_call(self, what: str, method, *args, default=None, **kwargs):
        """A ledger call that cannot abort the run: a failure (database locked,
        read-only, unreachable) is collected for the report, and `default` returned."""
        try:
            return method(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any driver error; the report says which
            message = (f"ledger error while {what}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
                       f"(this report holds the outcome; the next run marks unfinished ledger rows interrupted)")
            with self._lock:
                self.ledger_errors.append(message)
            return default

    def _ledger_start(self, run_id: str, job: Job, release: str | None, started=None):
        if self.ledger is None:
            return None
        return self._ledger_call(f"recording the start of {job.stack}", self.ledger.record_start,
            run_id, tenant=job.tenant, environment=job.environment, stack=job.stack, operation=job.operation,
            started=started,
            release=job.config.get("release") or release, program_commit=job.details.get("program_commit"),
            config_fingerprint=job.details.get("config_fingerprint"), config_snapshot=dict(job.config),
        )

    def _ledger_end(self, op_id, result: rpt.TargetResult, ended=None) -> None:
        if self.ledger is None or op_id is None:
            return
        details = {k: v for k, v in result.details.items() if k not in ("program_commit", "config_fingerprint")}
        self._ledger_call(f"recording the result of {result.stack}", self.ledger.record_end,
                          op_id, result.status, changes=result.changes, error=result.error,
                          error_resource=result.error_resource, error_component=result.error_component,
                          details=details, ended=ended)

    def _ledger_record(self, run_id: str, result: rpt.TargetResult, release: str | None) -> None:
        if self.ledger is None:
            return
        self._ledger_call(f"recording the result of {result.stack}", self.ledger.record,
                          run_id, tenant=result.tenant, environment=result.environment, stack=result.stack,
                          operation=result.operation, status=result.status, release=release,
                          error=result.error, details=result.details)
