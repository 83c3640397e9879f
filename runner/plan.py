"""What an `up` may deploy, and in which order: lifecycle gates and waves.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from runner.fleet import Job


@dataclass
class Wave:
    name: str
    jobs: list[Job] = field(default_factory=list)
    tolerance: int = 0


def lifecycle_block(ledger, environments: Sequence[str], connected: Mapping[str | None, Sequence[str]],
                    job: Job, release: str) -> str | None:
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
        return (f"release {release} has not reached {job.environment}: no deployment of it "
                f"succeeded in {previous} yet")
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
