"""The order of work and the failure policies of a run (runner.plan.RunPlan), with a fake
executor in place of the fleet: no engine, no worker process, seconds not minutes.

The e2e tests (tests/e2e/test_waves.py, test_lifecycle.py, test_rollback.py)
drive the same plan with the real engine."""

from __future__ import annotations

import pytest

from runner import report as rpt
from runner.fleet import SHARED_STACK, Job, RunSettings, not_started, retry_transient
from runner.plan import RunPlan
from runner.problems import UsageProblem
from runner.registry.models import Rollout
from runner.run import Run


class FakeExecutor:
    """Runs a batch as the fleet does, one job at a time: asks the plan before each job,
    tells it each outcome and runs the follow-ups it answers at once. A target's outcome
    is ``outcomes[(stack, operation)]`` or ``outcomes[stack]`` (default: succeeded)."""

    def __init__(self, outcomes: dict | None = None):
        self.outcomes = outcomes or {}
        self.batches: list[list[str]] = []

    def result(self, job: Job) -> rpt.TargetResult:
        status = self.outcomes.get((job.stack, job.operation), self.outcomes.get(job.stack, rpt.SUCCEEDED))
        return rpt.TargetResult(
            job.tenant,
            job.environment,
            job.stack,
            job.operation,
            status,
            started=rpt.now(),
            ended=rpt.now(),
            error=None if status == rpt.SUCCEEDED else f"{job.stack} {status}",
            details={**job.details, **({"wave": job.wave} if job.wave else {})},
        )

    def run_batch(self, jobs, run, policy):
        if jobs:
            self.batches.append([j.stack if j.operation != "rollback" else f"{j.stack} rollback" for j in jobs])
        results = []
        for job in jobs:
            reason = policy.may_start(job)
            result = not_started(job, reason) if reason else self.result(job)
            results += [result, *(self.result(j) for j in policy.finished(job, result))]
        return results


ENVS = ["staging", "production"]


def job(tenant: str, env: str = "staging") -> Job:
    return Job(tenant, env, f"{tenant}.{env}", "up", {"release": "r1"}, {})


def rollout(*waves: dict, tolerance: int | str = 0) -> Rollout:
    return Rollout(waves=waves, failure_tolerance=tolerance)


def run_plan(jobs, executor=None, *, settings=None, **options) -> tuple[rpt.Report, FakeExecutor]:
    settings = settings or RunSettings("up", concurrency=1)
    executor = executor or FakeExecutor()
    options.setdefault("environments", ENVS)
    run = Run(None, settings, run_id="run-1", release="r1")
    run.execute(RunPlan(jobs, settings, **options), executor)
    return run.finish(), executor


def statuses(report: rpt.Report) -> list[tuple[str, str, str]]:
    return [(t.stack, t.operation, t.status) for t in report.targets]


SHARED = Job(None, SHARED_STACK, SHARED_STACK, "up", {"release": "r1"}, {})


# --------------------------------------------------------------------------- order


def test_the_shared_stack_first_then_environments_in_promotion_order():
    jobs = [job("a", "production"), job("a"), job("b")]
    report, executor = run_plan(jobs, shared=SHARED)
    assert executor.batches == [[SHARED_STACK], ["a.staging", "b.staging"], ["a.production"]]
    assert report.shared.status == rpt.SUCCEEDED and SHARED_STACK not in [t.stack for t in report.targets]
    assert [(w["environment"], w["wave"]) for w in report.waves] == [("staging", "all"), ("production", "all")]
    assert report.exit_code == rpt.EXIT_OK


def test_other_operations_run_in_one_step_without_waves():
    jobs = [job("a", "production"), job("a")]
    settings = RunSettings("refresh", concurrency=1)
    report, executor = run_plan(
        [Job(j.tenant, j.environment, j.stack, "refresh", {}, {}) for j in jobs], settings=settings, environments=None
    )
    assert executor.batches == [["a.production", "a.staging"]]
    assert report.waves == []


def test_waves_in_order_with_tags_and_max():
    tags = {"a.staging": {"ring": "canary"}, "b.staging": {}, "c.staging": {}, "d.staging": {}}
    waves = rollout({"name": "canary", "tags": {"ring": "canary"}}, {"name": "early", "max": 2}, {"name": "rest"})
    report, executor = run_plan([job(t) for t in "abcd"], rollout=waves, tags=tags)
    assert executor.batches == [["a.staging"], ["b.staging", "c.staging"], ["d.staging"]]
    assert [(w["wave"], w["targets"]) for w in report.waves] == [("canary", 1), ("early", 2), ("rest", 1)]
    assert report.targets[0].details["wave"] == "canary"


def test_one_wave_only_and_an_unknown_wave_is_a_usage_problem():
    waves = rollout({"name": "early", "max": 1}, {"name": "rest"})
    report, executor = run_plan([job(t) for t in "ab"], rollout=waves, settings=RunSettings("up", wave="rest"))
    assert executor.batches == [["b.staging"]]
    with pytest.raises(UsageProblem, match="--wave nope: unknown wave"):
        RunPlan([], RunSettings("up", wave="nope"), environments=ENVS, rollout=waves)


def test_all_at_once_ignores_the_rollout():
    waves = rollout({"name": "early", "max": 1}, {"name": "rest"})
    _, executor = run_plan([job(t) for t in "ab"], rollout=waves, settings=RunSettings("up", strategy="all-at-once"))
    assert executor.batches == [["a.staging", "b.staging"]]


# --------------------------------------------------------------------------- lifecycle gates


def test_a_gated_target_is_blocked_and_the_shared_stack_waits_for_a_runnable_one():
    def gate(j: Job) -> str | None:
        return "release r1 has not reached production" if j.environment == "production" else None

    report, executor = run_plan([job("a", "production")], shared=SHARED, gate=gate)
    assert executor.batches == [], "nothing runnable: the shared stack is left alone"
    assert statuses(report) == [("a.production", "up", rpt.BLOCKED)]
    assert report.targets[0].error == "release r1 has not reached production"
    assert report.exit_code == rpt.EXIT_FAILED

    report, executor = run_plan([job("a"), job("a", "production")], shared=SHARED, gate=gate)
    assert executor.batches == [[SHARED_STACK], ["a.staging"]]
    assert statuses(report) == [("a.staging", "up", rpt.SUCCEEDED), ("a.production", "up", rpt.BLOCKED)]


def test_ignore_lifecycle_is_recorded_on_each_target():
    report, _ = run_plan([job("a")], settings=RunSettings("up", ignore_lifecycle=True))
    assert report.targets[0].details["ignore_lifecycle"] is True


# --------------------------------------------------------------------------- tolerance and halts


def test_a_wave_over_its_tolerance_halts_the_rollout():
    waves = rollout({"name": "canary", "max": 1}, {"name": "rest"})
    report, executor = run_plan(
        [job(t) for t in "abc"] + [job("a", "production")], FakeExecutor({"a.staging": rpt.FAILED}), rollout=waves
    )
    assert executor.batches == [["a.staging"]]
    assert statuses(report) == [
        ("a.staging", "up", rpt.FAILED),
        ("b.staging", "up", rpt.NOT_STARTED),
        ("c.staging", "up", rpt.NOT_STARTED),
        ("a.production", "up", rpt.NOT_STARTED),
    ]
    assert report.targets[1].error == "rollout halted after wave canary (staging): 1 failure(s), tolerance 0"
    assert report.notes == [report.targets[1].error]
    assert [w["failed"] for w in report.waves] == [1]


def test_failures_within_the_tolerance_go_on():
    waves = rollout({"name": "early", "max": 2}, {"name": "rest"}, tolerance=1)
    report, executor = run_plan([job(t) for t in "abc"], FakeExecutor({"a.staging": rpt.FAILED}), rollout=waves)
    assert executor.batches == [["a.staging", "b.staging"], ["c.staging"]]
    assert report.notes == []


def test_without_a_rollout_a_failure_halts_nothing():
    report, executor = run_plan([job("a"), job("a", "production")], FakeExecutor({"a.staging": rpt.FAILED}))
    assert executor.batches == [["a.staging"], ["a.production"]]


# --------------------------------------------------------------------------- failure policies


def test_on_failure_stop_starts_nothing_new_after_the_first_failure():
    report, _ = run_plan(
        [job(t) for t in "abc"] + [job("a", "production")],
        FakeExecutor({"a.staging": rpt.FAILED}),
        settings=RunSettings("up", concurrency=1, on_failure="stop"),
    )
    assert statuses(report) == [
        ("a.staging", "up", rpt.FAILED),
        ("b.staging", "up", rpt.NOT_STARTED),
        ("c.staging", "up", rpt.NOT_STARTED),
        ("a.production", "up", rpt.NOT_STARTED),
    ]
    assert report.targets[1].error == "stopped after a failure (--on-failure stop)"


def test_max_failures_counts_failures_across_the_run():
    outcomes = {"a.staging": rpt.FAILED, "b.staging": rpt.FAILED}
    report, _ = run_plan(
        [job(t) for t in "abc"] + [job("a", "production")],
        FakeExecutor(outcomes),
        settings=RunSettings("up", concurrency=1, max_failures=2),
    )
    assert [s for _, _, s in statuses(report)] == [rpt.FAILED, rpt.FAILED, rpt.NOT_STARTED, rpt.NOT_STARTED]
    assert report.targets[2].error == "stopped after 2 failure(s) (--max-failures 2)"


def test_on_failure_rollback_runs_the_rollback_right_after_its_failure():
    seen = []

    def rollback(j: Job, failed: rpt.TargetResult) -> Job:
        seen.append(failed.stack)
        return Job(j.tenant, j.environment, j.stack, "rollback", {"release": "r0"}, {}, details={"rollback_to": "r0"})

    report, executor = run_plan(
        [job(t) for t in "abc"],
        FakeExecutor({("b.staging", "up"): rpt.FAILED}),
        settings=RunSettings("up", on_failure="rollback"),
        rollback=rollback,
    )
    assert seen == ["b.staging"]
    assert statuses(report) == [
        ("a.staging", "up", rpt.SUCCEEDED),
        ("b.staging", "up", rpt.FAILED),
        ("b.staging", "rollback", rpt.SUCCEEDED),
        ("c.staging", "up", rpt.SUCCEEDED),
    ]
    assert report.waves[0]["failed"] == 1, "the failure counts for the wave, the rollback does not"


def test_a_target_with_nothing_to_roll_back_to_says_why():
    def rollback(j: Job, failed: rpt.TargetResult) -> None:
        failed.details["rollback"] = "no good release before 'r1'"

    report, _ = run_plan(
        [job("a")],
        FakeExecutor({"a.staging": rpt.FAILED}),
        settings=RunSettings("up", on_failure="rollback"),
        rollback=rollback,
    )
    assert statuses(report) == [("a.staging", "up", rpt.FAILED)]
    assert report.targets[0].details["rollback"] == "no good release before 'r1'"


# --------------------------------------------------------------------------- the shared stack


@pytest.mark.parametrize("shared_status,then", [(rpt.FAILED, rpt.NOT_STARTED), (rpt.LOCKED, rpt.LOCKED)])
def test_a_failed_shared_stack_starts_no_tenant(shared_status, then):
    report, executor = run_plan(
        [job("a"), job("b"), job("a", "production")], FakeExecutor({SHARED_STACK: shared_status}), shared=SHARED
    )
    assert executor.batches == [[SHARED_STACK]]
    assert statuses(report) == [
        (SHARED_STACK, "up", shared_status),
        ("a.staging", "up", then),
        ("b.staging", "up", then),
        ("a.production", "up", then),
    ]
    assert report.targets[1].error == f"the shared stack {shared_status}: shared {shared_status}"
    assert report.exit_code == (rpt.EXIT_LOCKED if shared_status == rpt.LOCKED else rpt.EXIT_FAILED)


# --------------------------------------------------------------------------- transient errors (#17)


def attempts(*outcomes: tuple[str, str | None]):
    """An attempt function answering each outcome (status, error kind) in turn."""
    answers = iter(outcomes)

    def attempt() -> rpt.TargetResult:
        status, kind = next(answers)
        return rpt.TargetResult(
            "a",
            "staging",
            "a.staging",
            "up",
            status,
            started=rpt.now(),
            ended=rpt.now(),
            error=None if status == rpt.SUCCEEDED else f"{kind} error",
            error_kind=kind,
        )

    return attempt


def test_a_transient_error_is_retried_and_every_attempt_is_in_the_result():
    slept = []
    result = retry_transient(
        attempts((rpt.FAILED, "transient"), (rpt.FAILED, "transient"), (rpt.SUCCEEDED, None)), 2, sleep=slept.append
    )
    assert result.status == rpt.SUCCEEDED and result.attempts == 3
    assert [a["error"] for a in result.details["attempts"]] == ["transient error", "transient error", None]
    assert len(slept) == 2 and all(s > 0 for s in slept), "backoff between attempts"


def test_retries_stop_at_the_limit_with_the_last_error():
    result = retry_transient(attempts(*[(rpt.FAILED, "transient")] * 5), 2, sleep=lambda s: None)
    assert (result.status, result.attempts, len(result.details["attempts"])) == (rpt.FAILED, 3, 3)


def test_a_permanent_error_is_never_retried():
    result = retry_transient(attempts((rpt.FAILED, "failed"), (rpt.SUCCEEDED, None)), 2, sleep=lambda s: None)
    assert (result.status, result.attempts) == (rpt.FAILED, 1)
    assert "attempts" not in result.details


def test_no_retry_after_an_interrupt():
    result = retry_transient(
        attempts((rpt.FAILED, "transient"), (rpt.SUCCEEDED, None)), 2, stopping=lambda: True, sleep=lambda s: None
    )
    assert (result.status, result.attempts) == (rpt.FAILED, 1)
