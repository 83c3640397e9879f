"""The order of work of a run: :class:`RunPlan`.

A run's order, in one place: the shared stack first (before the first batch
that runs anything), environments in promotion order, each in the rollout's
waves; lifecycle gates checked before each wave; a wave whose failures exceed
its tolerance halts the rollout; the failure policy (--on-failure
continue/stop/rollback, --max-failures) decides whether a job may start and
which follow-up (a rollback) a failure gets. The plan hands out :class:`Step`s
and reads their results; it runs nothing itself (runner.fleet does) and
records nothing (runner.run does).

Lifecycle (tenant-aware, decided from the ledger before any engine call):

* a release may go to the first environment at any time;
* it reaches environment k+1 once any deployment of it (tenanted or
  untenanted) succeeded in environment k;
* tenant T may deploy it to an environment E it is connected to only when E's
  phase is reached and T has succeeded with that release in every environment
  before E that T is connected to.

Waves (the registry's `rollout`): each wave takes the not-yet-planned targets
matching its tags, up to `max` (a count, or a percentage of all selected
targets); the last wave takes the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from runner import report as rpt
from runner.fleet import SHARED_STACK, Job, RunSettings, not_started
from runner.problems import UsageProblem


@dataclass
class Wave:
    name: str
    jobs: list[Job] = field(default_factory=list)
    tolerance: int = 0


def lifecycle_block(
    ledger, environments: Sequence[str], connected: Mapping[str | None, Sequence[str]], job: Job, release: str
) -> str | None:
    """Why `job` may not deploy `release` now, or None when it may."""
    envs = list(environments)
    index = envs.index(job.environment)
    if index == 0:
        return None
    # The tenant's own missing step is the more actionable reason: name it first.
    for env in envs[:index]:
        if env in connected.get(job.tenant, ()) and job.tenant not in ledger.succeeded_releases(env, release):
            return f"tenant {job.tenant} must deploy release {release} to {env} first"
    previous = envs[index - 1]
    if not ledger.release_reached(previous, release):
        return f"release {release} has not reached {job.environment}: no deployment of it succeeded in {previous} yet"
    return None


def waves(rollout, jobs: list[Job], tags: Mapping[str, Mapping[str, str]], only: str | None = None) -> list[Wave]:
    """Split one environment's jobs into the rollout's waves (in wave order)."""
    if rollout is None:
        return [Wave("all", list(jobs))]
    remaining = list(jobs)
    planned = []
    for wave in rollout.waves:
        matching = [j for j in remaining if all(tags.get(j.stack, {}).get(k) == v for k, v in wave.tags.items())]
        taken = matching[: wave.limit(len(jobs))] if not wave.takes_rest else matching
        remaining = [j for j in remaining if j not in taken]
        planned.append(Wave(wave.name, taken, rollout.tolerance(len(taken))))
    planned[-1].jobs += remaining  # nobody is left out of a rollout
    if only is not None:
        planned = [w for w in planned if w.name == only]
    return planned


@dataclass
class Step:
    """What to do next: record ``refused`` (targets that will not run, in order),
    then run ``jobs`` as one batch and hand the results to :meth:`RunPlan.done`."""

    jobs: list[Job] = field(default_factory=list)
    refused: list[rpt.TargetResult] = field(default_factory=list)
    environment: str | None = None
    wave: Wave | None = None
    started: datetime = field(default_factory=rpt.now)  # handed out just before it runs

    @property
    def shared(self) -> bool:
        return any(j.stack == SHARED_STACK for j in self.jobs)


class RunPlan:
    """The order of one run's work and its failure policy.

    ``environments`` (promotion order) and ``rollout`` apply to `up`; other
    operations run every job in one step. ``gate(job)`` says why a job may not
    deploy (lifecycle), ``rollback(job, failed)`` gives the job that returns a
    failed target to its last good release (or None, having said why in
    ``failed.details["rollback"]``).

    Use: ``for step in plan: record step.refused; results = run step.jobs
    (asking may_start/finished per job); plan.done(step, results)``. After the
    run, :attr:`waves` and :attr:`notes` belong in the report."""

    def __init__(
        self,
        jobs: Sequence[Job],
        settings: RunSettings,
        *,
        shared: Job | None = None,
        environments: Sequence[str] | None = None,
        rollout=None,
        tags: Mapping[str, Mapping[str, str]] | None = None,
        gate: Callable[[Job], str | None] | None = None,
        rollback: Callable[[Job, rpt.TargetResult], Job | None] | None = None,
    ):
        self.jobs, self.settings = list(jobs), settings
        self.environments = list(environments) if environments is not None else None
        strategy = settings.strategy or ("waves" if rollout else "all-at-once")
        self.rollout = rollout if strategy == "waves" else None  # None: each environment in one wave
        self.tags = tags or {}
        if settings.wave and (self.rollout is None or settings.wave not in {w.name for w in self.rollout.waves}):
            known = (
                ", ".join(w.name for w in self.rollout.waves) if self.rollout else "none: no rollout in the registry"
            )
            raise UsageProblem(f"--wave {settings.wave}: unknown wave (known: {known})")
        self.gate, self.rollback = gate, rollback
        self._shared = shared
        self.shared_result: rpt.TargetResult | None = None
        self.waves: list[dict] = []
        self.notes: list[str] = []
        self.halted: str | None = None
        self.failures = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the order

    def __iter__(self) -> Iterator[Step]:
        for env, wave in self._phases():
            if self.halted:
                yield Step(refused=[not_started(j, self.halted) for j in wave.jobs], environment=env, wave=wave)
                continue
            allowed, refused = [], []
            for job in wave.jobs:
                if why := (self.gate(job) if self.gate is not None else None):
                    refused.append(not_started(job, why, rpt.BLOCKED))
                else:
                    allowed.append(self._in_wave(job, wave))
            if allowed and self._shared is not None:
                # the shared stack before the first batch that runs anything: a run whose every
                # target is blocked or skipped leaves it alone
                shared, self._shared = self._shared, None
                yield Step([shared], refused)
                refused = []
            if self.shared_result is not None and self.shared_result.status != rpt.SUCCEEDED:
                failed = self.shared_result
                status = rpt.LOCKED if failed.status == rpt.LOCKED else rpt.NOT_STARTED  # locked: exit 4
                refused += [
                    not_started(j, f"the shared stack {failed.status}: {failed.error_line}", status) for j in allowed
                ]
                allowed = []
            if allowed or refused:
                yield Step(allowed, refused, environment=env, wave=wave)

    def _phases(self) -> Iterator[tuple[str | None, Wave]]:
        if self.environments is None:
            yield None, Wave("all", self.jobs)
            return
        for env in self.environments:
            for wave in waves(
                self.rollout, [j for j in self.jobs if j.environment == env], self.tags, self.settings.wave
            ):
                yield env, wave

    def _in_wave(self, job: Job, wave: Wave) -> Job:
        if self.environments is None:
            return job
        return replace(job, wave=wave.name, details={**job.details, "ignore_lifecycle": self.settings.ignore_lifecycle})

    def done(self, step: Step, results: Sequence[rpt.TargetResult]) -> None:
        """Read a step's results: the shared stack's outcome; a wave's failures against its tolerance."""
        if step.shared:
            self.shared_result = next(r for r in results if r.stack == SHARED_STACK)
            return
        if self.environments is None or not step.jobs:
            return
        failed = sum(r.status in (rpt.FAILED, rpt.ERROR) and r.operation == "up" for r in results)
        wave = step.wave
        self.waves.append(
            {
                "environment": step.environment,
                "wave": wave.name,
                "targets": len(step.jobs),
                "failed": failed,
                "tolerance": wave.tolerance,
                "started": step.started.isoformat(),
                "ended": rpt.now().isoformat(),
            }
        )
        if self.rollout is not None and failed > wave.tolerance:
            self.halted = (
                f"rollout halted after wave {wave.name} ({step.environment}): {failed} failure(s), "
                f"tolerance {wave.tolerance}"
            )
            self.notes.append(self.halted)

    # ------------------------------------------------------------------ the failure policy, per job

    def may_start(self, job: Job) -> str | None:
        """Why `job` must not start now (--on-failure stop, --max-failures), or None."""
        if job.stack == SHARED_STACK or job.operation == "rollback":
            return None
        with self._lock:
            if self.settings.on_failure == "stop" and self.failures:
                return "stopped after a failure (--on-failure stop)"
            if self.settings.max_failures is not None and self.failures >= self.settings.max_failures:
                return f"stopped after {self.failures} failure(s) (--max-failures {self.settings.max_failures})"
        return None

    def finished(self, job: Job, result: rpt.TargetResult) -> list[Job]:
        """Count a failure; with --on-failure rollback, the failed target's rollback runs at once."""
        if job.stack == SHARED_STACK or job.operation == "rollback":
            return []
        if result.status in (rpt.FAILED, rpt.ERROR):
            with self._lock:
                self.failures += 1
        if self.settings.on_failure != "rollback" or self.rollback is None or result.status != rpt.FAILED:
            return []
        try:
            back = self.rollback(job, result)
        except Exception as exc:  # noqa: BLE001 - e.g. the ledger unreadable: the run goes on
            result.details["rollback"] = f"not rolled back: {type(exc).__name__}: {exc}"
            return []
        return [back] if back is not None else []
