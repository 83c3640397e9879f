"""The CI review flow (#20) on the real engine: `preview --save-plans DIR`, then
`up --plans DIR` applies exactly what was reviewed, or refuses.

One fleet is deployed once for the module; each test changes it, reviews and
applies (or is refused), and leaves it converged for the next."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from runner import review
from tests.e2e.conftest import Sandbox, tenant

pytestmark = pytest.mark.e2e

SENTINEL = "review-sentinel-Zq81x"  # r-1's secret value: must never reach summary.md or the manifest
STALE = "stale plan: state changed since preview (re-run preview)"


class Fleet:
    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        self.tenants = {
            "r-1": tenant("r-1", secrets={"db_password": {"env": "REVIEW_DB_PASSWORD"}}),
            "r-2": tenant("r-2"),
            "r-3": tenant("r-3"),
        }

    def write(self) -> None:
        self.sandbox.write_registry(list(self.tenants.values()))

    def run(self, *args: str):
        return self.sandbox.run(*args, env={"REVIEW_DB_PASSWORD": SENTINEL})

    def history(self, tid: str) -> list[dict]:
        out = self.run("history", "--tenant", tid, "--env", "staging", "--json")
        assert out.code == 0, out.stderr
        return json.loads(out.stdout)

    def preview(self, plans: Path):
        result = self.run("preview", "--all-tenants", "--save-plans", str(plans), "--json")
        assert result.code == 0, result.stdout or result.stderr
        return json.loads((plans / review.MANIFEST).read_text())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, engine_bin) -> Fleet:
    fleet = Fleet(Sandbox(tmp_path_factory.mktemp("review"), engine_bin))
    fleet.write()
    deployed = fleet.run("up", "--all-tenants", "--yes", "--json")
    assert deployed.code == 0, deployed.stdout or deployed.stderr
    return fleet


def _targets(manifest: dict) -> dict[str, dict]:
    return {t["stack"]: t for t in manifest["targets"]}


def test_a_reviewed_change_is_applied_exactly_and_summarized(fleet, tmp_path):
    fleet.tenants["r-1"]["config"] = {"app_version": "1.1.0"}  # an update
    fleet.tenants["r-2"]["config"] = {"domain": "r-2.example.org"}  # another update
    fleet.write()
    plans = tmp_path / "plans"

    manifest = fleet.preview(plans)

    rows = _targets(manifest)
    assert {s for s, t in rows.items() if t["has_changes"]} == {"r-1.staging", "r-2.staging"}
    assert sorted(p.name for p in (plans / "plans").iterdir()) == ["r-1.staging.plan.json", "r-2.staging.plan.json"]
    assert rows["r-3.staging"]["plan_file"] is None and rows["r-3.staging"]["changes"] == {"same": 9}
    for t in rows.values():
        assert t["state_version"] not in (None, "none") and t["config_digest"]
    assert manifest["program_commit"] and manifest["registry_digest"]
    assert rows["r-1.staging"]["plan_digest"] == review.digest_file(plans / rows["r-1.staging"]["plan_file"])

    # summary.md, rendered as a pull-request comment: one row per changed target, replaces first, no secret
    text = (plans / review.SUMMARY).read_text()
    assert SENTINEL not in text and SENTINEL not in (plans / review.MANIFEST).read_text()
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert SENTINEL not in html
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    table_rows = [r for r in body.split("<tr>")[1:]]
    assert len(table_rows) == 2, body
    assert "r-1.staging" in table_rows[0] and "r-2.staging" in table_rows[1]  # no deletes: by name
    assert html.index("to update") < html.index("<table>")  # totals first
    assert "Deletes or replaces" not in html  # (deletes first: tests/unit/test_review.py)
    assert html.count("<details>") == 2 and "app_version" in html and "domain" in html
    assert len(text) < review.MAX_SUMMARY

    applied = fleet.run("up", "--plans", str(plans), "--yes", "--json")

    assert applied.code == 0, applied.stdout or applied.stderr
    result = applied.by_stack()
    assert set(result) == {"r-1.staging", "r-2.staging"}  # r-3 had nothing reviewed: never touched
    assert all(r["status"] == "succeeded" for r in result.values()), result
    again = fleet.run("preview", "--all-tenants", "--detailed-exitcode", "--json")
    assert again.code == 0, again.stdout


def test_a_target_whose_state_moved_fails_as_stale_and_the_others_apply(fleet, tmp_path):
    for tid in ("r-1", "r-2"):
        fleet.tenants[tid]["config"] = {**fleet.tenants[tid].get("config", {}), "app_version": "1.2.0"}
    fleet.write()
    plans = tmp_path / "plans"
    manifest = fleet.preview(plans)
    assert {s for s, t in _targets(manifest).items() if t["has_changes"]} == {"r-1.staging", "r-2.staging"}
    # another deployment changes r-1's state between review and merge
    other = fleet.run("up", "--tenant", "r-1", "--env", "staging", "--yes")
    assert other.code == 0, other.stderr
    before = len(fleet.history("r-1"))

    applied = fleet.run("up", "--plans", str(plans), "--yes", "--json")

    assert applied.code == 1, applied.stdout or applied.stderr
    result = applied.by_stack()
    assert result["r-1.staging"]["status"] == "failed"
    assert result["r-1.staging"]["error"].startswith(STALE), result["r-1.staging"]["error"]
    assert not {k: v for k, v in result["r-1.staging"]["changes"].items() if k != "same"}
    assert result["r-2.staging"]["status"] == "succeeded", result["r-2.staging"]
    assert "r-3.staging" not in result
    rows = fleet.history("r-1")
    assert len(rows) == before + 1 and rows[0]["status"] == "failed"  # recorded, nothing applied


def test_a_changed_registry_or_plan_file_refuses_everything(fleet, tmp_path):
    fleet.tenants["r-3"]["config"] = {"app_version": "1.3.0"}
    fleet.write()
    plans = tmp_path / "plans"
    manifest = fleet.preview(plans)
    assert [s for s, t in _targets(manifest).items() if t["has_changes"]] == ["r-3.staging"]
    before = len(fleet.history("r-3"))

    # (b) the registry changed after the review
    fleet.tenants["r-2"]["tags"] = {"reviewed": "no"}
    fleet.write()
    refused = fleet.run("up", "--plans", str(plans), "--yes", "--json")
    assert refused.code == 2, refused.stdout or refused.stderr
    assert "registry changed" in refused.stderr
    assert len(fleet.history("r-3")) == before

    # (c) the registry as reviewed, but a plan file edited
    del fleet.tenants["r-2"]["tags"]
    fleet.write()
    plan = plans / _targets(manifest)["r-3.staging"]["plan_file"]
    plan.write_text(plan.read_text().replace("1.3.0", "6.6.6"))
    refused = fleet.run("up", "--plans", str(plans), "--yes", "--json")
    assert refused.code == 2, refused.stdout or refused.stderr
    assert "differs from the reviewed one" in refused.stderr
    assert len(fleet.history("r-3")) == before

    # the way out: preview again, review, apply
    fresh = tmp_path / "fresh"
    assert [s for s, t in _targets(fleet.preview(fresh)).items() if t["has_changes"]] == ["r-3.staging"]
    applied = fleet.run("up", "--plans", str(fresh), "--yes")
    assert applied.code == 0, applied.stderr


def test_a_secret_changed_after_the_review_makes_that_target_stale(fleet, tmp_path):
    fleet.tenants["r-1"]["config"] = {**fleet.tenants["r-1"].get("config", {}), "app_version": "1.4.0"}
    fleet.write()
    plans = tmp_path / "plans"
    manifest = fleet.preview(plans)
    assert [s for s, t in _targets(manifest).items() if t["has_changes"]] == ["r-1.staging"]

    applied = fleet.sandbox.run(
        "up", "--plans", str(plans), "--yes", "--json", env={"REVIEW_DB_PASSWORD": SENTINEL + "-rotated"}
    )

    assert applied.code == 1, applied.stdout or applied.stderr
    row = applied.by_stack()["r-1.staging"]
    assert row["status"] == "failed" and row["error"].startswith(STALE) and "secret" in row["error"], row
    assert SENTINEL not in applied.stdout + applied.stderr
    # with the reviewed secret, the same plans apply
    assert fleet.run("up", "--plans", str(plans), "--yes").code == 0
