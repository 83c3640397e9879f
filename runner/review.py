"""The CI review flow (#20): `preview --save-plans DIR` and `up --plans DIR`.

A preview with `--save-plans` asks the engine for an update plan per target
(DIR/plans/<stack>.plan.json, kept only for targets with changes) and writes
DIR/manifest.json (what was reviewed: program commit, registry digest, per
target its config digest, the state version the preview saw, change counts,
steps and plan file digest) and DIR/summary.md (the pull-request comment).

`up --plans DIR` applies exactly that: a different program commit, registry
or plan file is a usage error (exit 2, nothing run); a target whose state or
config moved since the preview fails as a stale plan with nothing applied;
targets without reviewed changes and targets not in the manifest are not
touched. The engine applies each plan (`up --plan`); on top of it the worker
runs a fresh preview that must plan the same steps (resources, operations,
changed keys) as the reviewed one: the local platform's dynamic providers
serialize their provider into every input, which the engine's plan
constraints cannot compare across runs (see the README, "Review flow").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner import report as rpt
from runner.names import SHARED_STACK
from runner.problems import UsageProblem

MANIFEST = "manifest.json"
SUMMARY = "summary.md"
PLANS = "plans"
FORMAT = 1
STALE = "stale plan: state changed since preview (re-run preview)"
MAX_SUMMARY = 60_000


def digest_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def registry_digest(source: str) -> str:
    """A digest of the registry document (the file's bytes; for a URL, its address)."""
    path = Path(source)
    data = path.read_bytes() if path.is_file() else source.encode()
    return hashlib.sha256(data).hexdigest()


def has_changes(changes: dict[str, int] | None) -> bool:
    return any(n for op, n in (changes or {}).items() if op not in ("same", "read"))


def plan_path(plans_dir: Path, stack: str) -> Path:
    return plans_dir / PLANS / f"{stack}.plan.json"


# --------------------------------------------------------------------------- preview --save-plans


def preview_jobs(jobs: list, plans_dir: str) -> list:
    """Each target's preview saves its update plan under DIR/plans."""
    root = Path(plans_dir).resolve()
    (root / PLANS).mkdir(parents=True, exist_ok=True)
    for stale in (root / PLANS).glob("*.plan.json"):  # a directory reused: only this run's plans
        stale.unlink()
    return [replace(j, plan_file=str(plan_path(root, j.stack))) for j in jobs]


def write_review(
    plans_dir: str,
    report: rpt.Report,
    *,
    program_commit: str | None,
    release: str | None,
    registry_source: str,
    fingerprints: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """manifest.json and summary.md from a finished `preview --save-plans`; plan files of
    targets without changes are removed (nothing to apply there). ``fingerprints``: each
    stack's config fingerprint as previewed (`up --plans` compares it)."""
    root = Path(plans_dir).resolve()
    targets = []
    for row in report.targets:
        if row.stack == SHARED_STACK or row.operation != "preview":
            continue
        changed = has_changes(row.changes)
        plan = plan_path(root, row.stack)
        entry = {
            "stack": row.stack,
            "tenant": row.tenant,
            "environment": row.environment,
            "status": row.status,
            "config_digest": (fingerprints or {}).get(row.stack),
            "state_version": row.details.get("state_version"),
            "changes": {k: v for k, v in (row.changes or {}).items() if v},
            "has_changes": changed,
            "steps": row.details.get("steps") or [],
            "plan_file": None,
            "plan_digest": None,
            "error": row.error,
        }
        if row.status == rpt.SUCCEEDED and changed and plan.is_file():
            entry["plan_file"] = str(plan.relative_to(root))
            entry["plan_digest"] = digest_file(plan)
        elif plan.exists():
            plan.unlink()
        targets.append(entry)
    manifest = {
        "format": FORMAT,
        "run_id": report.run_id,
        "created": rpt.now().isoformat(timespec="seconds"),
        "program_commit": program_commit,
        "release": release,
        "registry_digest": registry_digest(registry_source),
        "totals": totals(targets),
        "targets": targets,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (root / SUMMARY).write_text(render_summary(manifest))
    report.notes.append(
        f"plans saved: {sum(t['plan_file'] is not None for t in targets)} target(s) with changes; "
        f"{root / MANIFEST}, {root / SUMMARY}"
    )
    return manifest


def totals(targets: list[dict]) -> dict[str, int]:
    out = {
        "targets": len(targets),
        "with_changes": sum(t["has_changes"] for t in targets),
        "failed": sum(t["status"] != rpt.SUCCEEDED for t in targets),
    }
    for op in ("create", "update", "delete", "replace"):
        out[op] = sum(int(t["changes"].get(op, 0)) for t in targets)
    return out


# --------------------------------------------------------------------------- summary.md


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _ops(changes: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(changes.items()) if op not in ("same", "read") and n) or "none"


def _danger(t: dict) -> int:
    return int(t["changes"].get("delete", 0)) + int(t["changes"].get("replace", 0))


def _code(text: str) -> str:
    """Inline code that a backtick in the text cannot break out of."""
    return "`` " + str(text).replace("\n", " ") + " ``"


def _step_label(step: dict) -> str:
    """`Backend/backend-app`, `provider default`: the resource a reviewer recognizes."""
    name = step.get("name") or str(step["urn"]).rsplit("::", 1)[-1]
    if step.get("component"):
        return f"{str(step['component']).rsplit(':', 1)[-1]}/{name}"
    if "::pulumi:providers:" in str(step["urn"]):
        return f"provider {name}"
    return name


def render_summary(manifest: dict, limit: int = MAX_SUMMARY) -> str:
    """The pull-request comment: totals, deletes/replaces first, one row per changed target,
    then a <details> block per target. Only names and key names appear: never a value."""
    changed = [t for t in manifest["targets"] if t["has_changes"] or t["status"] != rpt.SUCCEEDED]
    changed.sort(key=lambda t: (-_danger(t), t["status"] == rpt.SUCCEEDED, t["stack"]))
    tot = manifest["totals"]
    head = [
        f"## runner preview: {tot['with_changes']} of {tot['targets']} target(s) with changes",
        "",
        f"**{tot['create']}** to create, **{tot['update']}** to update, **{tot['delete']}** to delete, "
        f"**{tot['replace']}** to replace"
        + (f"; **{tot['failed']}** target(s) failed to preview" if tot["failed"] else "")
        + ".",
        "",
    ]
    dangerous = [t for t in changed if _danger(t)]
    if dangerous:
        head.append(
            f"> [!WARNING]\n> Deletes or replaces in {len(dangerous)} target(s): "
            + ", ".join(
                f"{_code(t['stack'])} ({_ops({k: v for k, v in t['changes'].items() if k in ('delete', 'replace')})})"
                for t in dangerous[:20]
            )
            + (" and more" if len(dangerous) > 20 else "")
        )
        head.append("")
    head.append(
        f"Program commit {_code(manifest['program_commit'] or 'unknown')}, run {_code(manifest['run_id'])}; "
        f"apply exactly these plans with `runner up --plans DIR`."
    )
    head += ["", "| target | changes | deletes/replaces | status |", "| --- | --- | --- | --- |"]
    rows, blocks = [], []
    for t in changed:
        rows.append(f"| {_cell(t['stack'])} | {_cell(_ops(t['changes']))} | {_danger(t)} | {_cell(t['status'])} |")
        lines = [f"<details><summary>{t['stack']}: {_ops(t['changes'])}</summary>", ""]
        if t["error"]:
            lines.append(f"- preview failed: {_code(str(t['error']).splitlines()[0][:300])}")
        steps = sorted(
            t["steps"],
            key=lambda s: (s["op"] not in ("delete", "replace", "delete-replaced", "create-replacement"), s["urn"]),
        )
        for s in steps:
            keys = f" (changed: {', '.join(_code(k) for k in s.get('keys') or [])})" if s.get("keys") else ""
            lines.append(f"- **{s['op']}** {_code(_step_label(s))}{keys}")
        lines += ["", "</details>", ""]
        blocks.append("\n".join(lines))
    tail = ["", f"_Full details: `{MANIFEST}` in the plans artifact._", ""]
    text = "\n".join(head + rows + [""] + blocks + tail)
    if len(text) <= limit:
        return text
    # too long for one comment: keep totals and as many targets as fit, say how many were left out
    kept_rows, kept_blocks = [], []
    budget = limit - len("\n".join(head)) - 400
    for row, block in zip(rows, blocks, strict=False):
        if budget - len(row) - len(block) - 2 < 0:
            break
        kept_rows.append(row)
        kept_blocks.append(block)
        budget -= len(row) + len(block) + 2
    left = len(rows) - len(kept_rows)
    cut = [
        f"_{left} more target(s) with changes left out of this comment (length limit); "
        f"the full list is in `{MANIFEST}` in the plans artifact._",
        "",
    ]
    return "\n".join(head + kept_rows + [""] + kept_blocks + ["", *cut])


# --------------------------------------------------------------------------- up --plans


def load_manifest(plans_dir: str) -> dict[str, Any]:
    path = Path(plans_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageProblem(f"--plans: cannot read {path}: {exc} (nothing was run)") from None
    if manifest.get("format") != FORMAT:
        raise UsageProblem(f"--plans: {path}: unknown format {manifest.get('format')!r} (nothing was run)")
    return manifest


def check_manifest(plans_dir: str, manifest: dict, *, program_commit: str | None, registry_source: str) -> None:
    """Exit 2 (nothing run) when what would be applied is not what was reviewed."""
    root = Path(plans_dir)
    problems = []
    if manifest.get("program_commit") != program_commit:
        problems.append(
            f"the program commit is {program_commit}, the plans were made at {manifest.get('program_commit')}"
        )
    if manifest.get("registry_digest") != registry_digest(registry_source):
        problems.append("the registry changed since the preview")
    for t in manifest.get("targets", []):
        if t.get("plan_file"):
            plan = root / t["plan_file"]
            if not plan.is_file() or Path(t["plan_file"]).is_absolute() or ".." in Path(t["plan_file"]).parts:
                problems.append(f"{t['stack']}: plan file {t['plan_file']} is missing")
            elif digest_file(plan) != t.get("plan_digest"):
                problems.append(f"{t['stack']}: plan file {t['plan_file']} differs from the reviewed one")
    if problems:
        raise UsageProblem(
            "--plans: refusing to apply plans that are not the reviewed ones (re-run preview "
            "--save-plans; nothing was run):\n  " + "\n  ".join(problems)
        )


def reviewed_stacks(manifest: dict) -> frozenset[str]:
    """The stacks `up --plans` may touch: those with reviewed changes (or a failed preview, reported)."""
    return frozenset(
        t["stack"] for t in manifest.get("targets", []) if t.get("has_changes") or t.get("status") != rpt.SUCCEEDED
    )


def apply_jobs(jobs: list, plans_dir: str, manifest: dict) -> tuple[list, list]:
    """The up jobs bound to their reviewed plans; and (job, reason) for targets that cannot be applied."""
    root = Path(plans_dir).resolve()
    entries = {t["stack"]: t for t in manifest.get("targets", [])}
    ready, refused = [], []
    for job in jobs:
        entry = entries.get(job.stack)
        if entry is None:
            continue
        if entry["status"] != rpt.SUCCEEDED or not entry.get("plan_file"):
            refused.append(
                (
                    job,
                    f"no reviewed plan: the preview of this target {entry['status']} "
                    f"({(entry.get('error') or '').splitlines()[0] if entry.get('error') else 'no plan'})",
                )
            )
            continue
        review = {"state_version": entry.get("state_version"), "steps": entry.get("steps") or []}
        if job.config_fingerprint != entry.get("config_digest"):
            review["stale"] = "its config (or a secret) changed since preview"
        ready.append(
            replace(
                job,
                plan_file=str(root / entry["plan_file"]),
                review=review,
                details={**job.details, "reviewed_run": manifest.get("run_id")},
            )
        )
    return ready, refused
