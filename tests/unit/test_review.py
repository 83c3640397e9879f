"""summary.md and the manifest checks of the review flow (#20), without the engine.
The real-engine flow is tests/e2e/test_review_flow.py."""

from __future__ import annotations

import json

import pytest
from markdown_it import MarkdownIt

from runner import review
from runner.problems import UsageProblem


def _target(stack: str, changes: dict, steps=(), status="succeeded") -> dict:
    return {
        "stack": stack,
        "tenant": stack.split(".")[0],
        "environment": "staging",
        "status": status,
        "config_digest": "c",
        "state_version": "v",
        "changes": changes,
        "has_changes": review.has_changes(changes),
        "steps": list(steps),
        "plan_file": None,
        "plan_digest": None,
        "error": None if status == "succeeded" else "boom",
    }


def _manifest(targets: list[dict]) -> dict:
    return {"run_id": "r1", "program_commit": "abc", "totals": review.totals(targets), "targets": targets}


def _render(text: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(text)


def _rows(html: str) -> list[str]:
    return html.split("<tbody>", 1)[1].split("</tbody>", 1)[0].split("<tr>")[1:]


def test_deletes_and_replaces_come_first_and_unchanged_targets_have_no_row():
    step = {"urn": "urn:pulumi:s::runner::t::db", "name": "db", "op": "delete", "keys": []}
    targets = [
        _target("a-1.staging", {"update": 2, "same": 7}),
        _target("b-1.staging", {"same": 9}),
        _target("c-1.staging", {"delete": 1, "same": 8}, [step]),
        _target("d-1.staging", {"replace": 1, "delete": 2}),
    ]
    html = _render(review.render_summary(_manifest(targets)))
    rows = _rows(html)
    assert len(rows) == 3
    assert ["d-1" in rows[0], "c-1" in rows[1], "a-1" in rows[2]] == [True, True, True]
    head = html.split("<table>")[0]
    assert "3 of 4 target(s)" in head and "Deletes or replaces in 2 target(s)" in head
    assert html.count("<details>") == 3 and "<strong>delete</strong>" in html


def test_secret_values_never_appear_only_key_names():
    sentinel = "s3cr3t-sentinel"
    step = {
        "urn": "urn:pulumi:s::runner::t::cfg",
        "name": "cfg",
        "op": "update",
        "keys": ["db_password"],
        "new": sentinel,
    }  # a value the summary must ignore even if a step carried one
    html = _render(review.render_summary(_manifest([_target("a-1.staging", {"update": 1}, [step])])))
    assert sentinel not in html and "db_password" in html


def test_a_long_fleet_is_cut_under_the_limit_with_a_line_saying_so():
    steps = [
        {"urn": f"urn:pulumi:s::runner::t::r{i}", "name": f"r{i}" * 20, "op": "update", "keys": ["k"] * 5}
        for i in range(30)
    ]
    targets = [_target(f"t-{i}.staging", {"update": 30}, steps) for i in range(300)]
    text = review.render_summary(_manifest(targets))
    assert len(text) < review.MAX_SUMMARY
    html = _render(text)
    left = 300 - len(_rows(html))
    assert 0 < left < 300 and f"{left} more target(s) with changes left out" in html
    assert "manifest.json" in html.rsplit("</table>", 1)[1]


def test_check_manifest_refuses_another_commit_registry_or_plan_file(tmp_path):
    registry = tmp_path / "tenants.yaml"
    registry.write_text("tenants: []\n")
    (tmp_path / "plans").mkdir()
    plan = tmp_path / "plans" / "a-1.staging.plan.json"
    plan.write_text("{}")
    manifest = {
        "format": 1,
        "program_commit": "abc",
        "registry_digest": review.registry_digest(str(registry)),
        "targets": [
            {
                **_target("a-1.staging", {"update": 1}),
                "plan_file": "plans/a-1.staging.plan.json",
                "plan_digest": review.digest_file(plan),
            }
        ],
    }
    (tmp_path / review.MANIFEST).write_text(json.dumps(manifest))
    loaded = review.load_manifest(str(tmp_path))
    review.check_manifest(str(tmp_path), loaded, program_commit="abc", registry_source=str(registry))
    with pytest.raises(UsageProblem, match="program commit"):
        review.check_manifest(str(tmp_path), loaded, program_commit="def", registry_source=str(registry))
    plan.write_text("{ }")
    with pytest.raises(UsageProblem, match="differs from the reviewed one"):
        review.check_manifest(str(tmp_path), loaded, program_commit="abc", registry_source=str(registry))
    registry.write_text("tenants: [] # edited\n")
    with pytest.raises(UsageProblem, match="registry changed"):
        review.check_manifest(str(tmp_path), loaded, program_commit="abc", registry_source=str(registry))
    assert review.reviewed_stacks(loaded) == {"a-1.staging"}
