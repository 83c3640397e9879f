"""Releases: what a rollback returns to, and the program it runs.

Pulumi has no rollback command: a rollback redeploys an earlier release, with
the config recorded in the ledger for it and, when it was deployed from
another commit, the program at that commit (a temporary git worktree). It
never imports old state.
"""

from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner.fleet import Job, ProgramTree

_WORKTREES = threading.Lock()


class RollbackImpossible(Exception):
    """No release to go back to, or its program cannot be checked out."""


def _base(commit: str | None) -> str | None:
    return commit.removesuffix("-dirty") if commit else None


def current_release(ledger, stack: str) -> str | None:
    """The release of the target's newest deployment attempt (failed or not)."""
    for row in ledger.history(stack, limit=200):
        if row.operation == "rollback" and row.status == "failed":
            continue  # a failed rollback did not make its release current: retrying it stays possible
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
        raise RollbackImpossible(
            f"program commit {commit!r} is not a commit of this repository (expected a hex commit id)"
        )
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        cwd=project_dir,
        capture_output=True,
        text=True,
    )
    full = proc.stdout.strip()
    if proc.returncode != 0 or not full.startswith(commit) or len(full) not in (40, 64):
        raise RollbackImpossible(f"program commit {commit!r} is not a commit of this repository")
    check = subprocess.run(["git", "cat-file", "-e", f"{full}^{{commit}}"], cwd=project_dir, capture_output=True)
    if check.returncode != 0:
        raise RollbackImpossible(f"program commit {commit!r} is not a commit of this repository")
    return full


def _same(a: str | None, b: str | None) -> bool:
    """Two commit ids (full or abbreviated) that name the same commit."""
    return bool(a and b) and (a.startswith(b) or b.startswith(a))


def program_at(
    project_dir: Path,
    state_dir: Path,
    commit: str | None,
    checkout: str | None,
    *,
    row=None,
    fingerprint: str | None = None,
) -> ProgramTree | None:
    """None when the checkout's program is the one to run; else a worktree of `commit`.

    The commit is verified to be one of this repository first. The checkout
    runs only when it is that program: the same clean commit, or (when the
    ledger row recorded it) the same program fingerprint. A dirty or
    changed work tree (an uncommitted migration, say) never stands in for a
    release: the rollback runs the commit's own tree."""
    recorded = (getattr(row, "details", None) or {}).get("program_fingerprint")
    if not commit:
        return None
    if recorded and fingerprint:
        if recorded == fingerprint:
            return None
    elif _same(_base(commit), _base(checkout)) and not (checkout or "").endswith("-dirty"):
        return None  # the same clean commit (or deployed from its uncommitted changes: best effort)
    commit = verified_commit(project_dir, _base(commit))
    tree = state_dir / "worktrees" / commit
    with _WORKTREES:  # --on-failure rollback: failed targets of one commit go back concurrently
        if not tree.exists():
            proc = subprocess.run(
                ["git", "worktree", "add", "--detach", str(tree), commit],
                cwd=project_dir,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise RollbackImpossible(f"cannot check out program commit {commit}: {proc.stderr.strip()}")
    return ProgramTree(dir=str(tree), name=f"program-{commit}", project_dir=str(project_dir))


def anchored_config(config: dict[str, Any], project_dir: Path, tree: Path) -> dict[str, Any]:
    """The config an earlier commit's program needs to resolve paths as it did when deployed.

    The program resolves a relative path against its own tree (PROJECT_ROOT);
    run from a worktree, that tree is the worktree. A relative path that the
    commit tracks (`stacks/migrations`) is right there; one it does not track
    (the platform root `.runner/platform`, data of the project directory) is
    made absolute against the project directory, as it resolved at deploy time.
    Keys left to the program's default (Pulumi.yaml `config:`) count too."""
    from runner.registry.schema import load_config_schema

    values = dict(config)
    try:
        schema = load_config_schema(tree)
    except Exception:  # an older Pulumi.yaml the schema reader refuses: only the given values
        schema = {}
    candidates = {
        k: spec.default for k, spec in schema.items() if spec.type == "string" and spec.default and k not in values
    }
    candidates.update({k: v for k, v in values.items() if isinstance(v, str) and v})
    for key, value in candidates.items():
        if "/" not in value and not value.startswith("."):
            continue
        path = Path(value).expanduser()
        if path.is_absolute() or (tree / path).exists() or not (project_dir / path).exists():
            continue
        values[key] = str((project_dir / path).resolve())
    return values


def rollback_job(job: Job, row, program: ProgramTree | None) -> Job:
    """The job that redeploys `row`'s release with its recorded config."""
    config = dict(row.config_snapshot or job.config)
    config["release"] = row.release
    if program:
        config = anchored_config(config, Path(program.project_dir), Path(program.dir))
    return replace(
        job,
        operation="rollback",
        config=config,
        program=program,
        program_commit=row.program_commit,
        config_fingerprint=row.config_fingerprint,
        program_fingerprint=(row.details or {}).get("program_fingerprint"),
        details={**job.details, "rollback_to": row.release, "rollback_from_run": row.run_id},
    )


def at_deployed_program(ledger, job: Job, project_dir: Path, state_dir: Path, commit: str | None) -> Job:
    """A drift check compares reality and the state with the code *at the target's
    deployed release*: when that came from another commit (or the work tree
    changed since), the job runs that commit's program from a worktree, and
    `details.behind` says the project is ahead. Newer code the target has not
    received is not drift."""
    row = ledger.last_good_release(job.stack)
    if row is None:
        return job
    try:
        program = program_at(
            project_dir, state_dir, row.program_commit, commit, row=row, fingerprint=job.program_fingerprint
        )
    except RollbackImpossible as exc:
        return replace(
            job,
            details={
                **job.details,
                "behind": [
                    {
                        "name": "program",
                        "note": f"deployed from {row.program_commit}; checked with the project's code ({exc})",
                    }
                ],
            },
        )
    if program is None:
        return job
    note = (
        f"deployed from commit {row.program_commit}, the project is at {commit or 'an unknown commit'}"
        f"{' (uncommitted changes)' if (commit or '').endswith('-dirty') or row.program_commit == commit else ''}"
    )
    details = {
        **job.details,
        "behind": [{"name": "program", "deployed": row.program_commit, "project": commit, "note": note}],
    }
    return replace(
        job,
        config=anchored_config(dict(job.config), project_dir, Path(program.dir)),
        details=details,
        program=program,
        program_commit=row.program_commit,
        program_fingerprint=(row.details or {}).get("program_fingerprint"),
    )
