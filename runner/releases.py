"""Releases: what a rollback returns to, and the program it runs.

Pulumi has no rollback command: a rollback redeploys an earlier release, with
the config recorded in the ledger for it and, when it was deployed from
another commit, the program at that commit (a temporary git worktree). It
never imports old state.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

from runner.fleet import Job


class RollbackImpossible(Exception):
    """No release to go back to, or its program cannot be checked out."""


def _base(commit: str | None) -> str | None:
    return commit.removesuffix("-dirty") if commit else None


def current_release(ledger, stack: str) -> str | None:
    """The release of the target's newest deployment attempt (failed or not)."""
    for row in ledger.history(stack, limit=200):
        if row.operation in ("up", "rollback") and row.status in ("succeeded", "failed"):
            return row.release
    return None


def rollback_point(ledger, stack: str, *, to: str | None = None, current: str | None = None):
    """The ledger row to return to: `to` by name, else the newest good release before `current`."""
    if to:
        for row in ledger.history(stack, limit=None):
            if row.operation in ("up", "rollback") and row.status == "succeeded" and row.release == to:
                return row
        raise RollbackImpossible(f"{stack}: release {to!r} was never deployed successfully")
    current = current if current is not None else current_release(ledger, stack)
    row = ledger.last_good_release(stack, before_release=current)
    if row is None:
        raise RollbackImpossible(f"{stack}: no good release before {current!r} is recorded in the ledger")
    return row


_HEX = re.compile(r"[0-9a-f]{7,64}")


def verified_commit(project_dir: Path, commit: str) -> str:
    """The full id of ``commit`` (hex, as the ledger records it) when it is a
    commit of this repository; else RollbackImpossible. The ledger may be
    shared: a name such as ``--orphan``, ``HEAD~1`` or a branch is never
    handed to git. Rows recorded before full ids hold a 12-digit abbreviation;
    it is expanded (and must be unambiguous)."""
    if not _HEX.fullmatch(commit):
        raise RollbackImpossible(f"program commit {commit!r} is not a commit of this repository "
                                 "(expected a hex commit id)")
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], cwd=project_dir,
                          capture_output=True, text=True)
    full = proc.stdout.strip()
    if proc.returncode != 0 or not full.startswith(commit) or len(full) not in (40, 64):
        raise RollbackImpossible(f"program commit {commit!r} is not a commit of this repository")
    check = subprocess.run(["git", "cat-file", "-e", f"{full}^{{commit}}"], cwd=project_dir, capture_output=True)
    if check.returncode != 0:
        raise RollbackImpossible(f"program commit {commit!r} is not a commit of this repository")
    return full


def program_at(project_dir: Path, state_dir: Path, commit: str | None, checkout: str | None) -> dict | None:
    """None when the checkout's program is the one to run; else a worktree of `commit`
    (verified to be a commit of this repository first)."""
    commit, checkout = _base(commit), _base(checkout)
    if not commit or commit == checkout:
        return None
    commit = verified_commit(project_dir, commit)
    if checkout and commit.startswith(checkout):
        return None
    tree = state_dir / "worktrees" / commit
    if not tree.exists():
        proc = subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=project_dir,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RollbackImpossible(f"cannot check out program commit {commit}: {proc.stderr.strip()}")
    return {"dir": str(tree), "name": f"program-{commit}"}


def rollback_job(job: Job, row, program: dict | None) -> Job:
    """The job that redeploys `row`'s release with its recorded config."""
    config = dict(row.config_snapshot or job.config)
    config["release"] = row.release
    details = {**job.details, "rollback_to": row.release, "rollback_from_run": row.run_id,
               "program_commit": row.program_commit, "config_fingerprint": row.config_fingerprint}
    if program:
        details["program"] = program
    return replace(job, operation="rollback", config=config, details=details)
