"""The cause of the intermittent [1, 0] in test_two_runners_on_one_tenant_never_apply_at_once (#18).

The engine reads a stack's checkpoint before it takes the lock, and the file
backend rewrites the `.attrs` sidecar in place: runner B's engine can read it
empty while runner A writes (`failed to load checkpoint: EOF`). By the time B
looks, A may have finished and unlocked, and the checkpoint reads whole again:
that is a concurrent write, so B waits as for a lock and retries; it must not
fail. The worker is replaced by a script answering like one (first the
engine's checkpoint error, then success): what is under test is Fleet.run_job."""

from __future__ import annotations

import json

from runner import report as rpt
from runner.fleet import Job, RunSettings
from runner.plan import RunPlan
from runner.run import Run

STACK = "race-1.staging"


def test_a_checkpoint_unreadable_while_another_runner_wrote_it_is_waited_for_then_retried(tmp_path, fleet_with_worker):
    calls = tmp_path / "calls"
    unreadable = json.dumps(
        {
            "type": "result",
            "ok": False,
            "error": {
                "kind": "checkpoint",
                "message": "failed to load checkpoint: EOF",
                "urn": None,
                "component": None,
            },
        }
    )
    ok = json.dumps({"type": "result", "ok": True, "changes": {"same": 2}, "outputs": {}})
    script = (
        f"import pathlib, sys; sys.stdin.read(); p = pathlib.Path({str(calls)!r}); "
        f"n = len(p.read_text()) if p.exists() else 0; p.write_text('x' * (n + 1)); "
        f"print({unreadable!r} if n == 0 else {ok!r})"
    )

    fleet = fleet_with_worker(script)
    # the other runner's write has completed: the checkpoint and its sidecar are whole, no lock is left
    stacks = tmp_path / "state" / ".pulumi" / "stacks" / "runner"
    stacks.mkdir(parents=True)
    (stacks / f"{STACK}.json").write_text(json.dumps({"version": 3, "checkpoint": {}}))
    (stacks / f"{STACK}.json.attrs").write_text('{"user.cache_control": ""}')

    settings = RunSettings(operation="preview", concurrency=1, lock_timeout=30)
    run = Run(None, settings, run_id="run-1")
    run.execute(RunPlan([Job("race-1", "staging", STACK, "preview", {}, {})], settings), fleet)
    report = run.finish()

    assert [(t.stack, t.status, t.error) for t in report.targets] == [(STACK, rpt.SUCCEEDED, None)]
    assert calls.read_text() == "xx"  # waited as for a lock, then ran again
