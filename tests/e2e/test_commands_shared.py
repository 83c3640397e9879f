"""Commands and options that leave a deployed fleet as it is, run against ONE fleet
deployed once (conftest.shared_fleet: the initial `up` runs as a CI job would, with
GitHub's run id, a step summary, JSON progress lines and a Slack notification).
Each test asserts what the command reports, not only its exit code (#18)."""

from __future__ import annotations

import json

import pytest
from ruamel.yaml import YAML

from runner.registry.database import write_registry_table
from tests.e2e.conftest import SHARED_TENANTS

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("shared_fleet")]

STACKS = {"gold-1.staging", "gold-2.staging", "plain-1.staging"}


def _json_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _no_changes(result) -> None:
    for row in result.json["targets"]:
        assert set(row["changes"]) <= {"same"}, (row["stack"], row["changes"])


# --------------------------------------------------------------------------- the initial deploy


def test_the_run_id_is_githubs_run_id_and_attempt(shared_fleet):
    assert shared_fleet.deployed.json["run_id"] == "4242.2"
    merged = shared_fleet.run("report", "--run-id", "4242.2", "--json")
    assert merged.code == 0, merged.stderr
    assert {s: t["status"] for s, t in merged.by_stack().items()} == {s: "succeeded" for s in STACKS}
    assert merged.json["release"] == "r1"


def test_log_format_json_writes_one_json_record_per_progress_line(shared_fleet):
    stderr = shared_fleet.deployed.stderr
    records = _json_lines(stderr)
    progress = [line for line in stderr.splitlines() if line.startswith("[")]
    assert progress == [], f"text progress lines with --log-format json: {progress[:3]}"
    assert records and all(r["run_id"] == "4242.2" for r in records)
    assert all({"tenant", "environment", "stack", "message"} <= set(r) for r in records)
    started = {(r["tenant"], r["environment"], r["stack"]) for r in records if r["message"] == "started"}
    assert started == {
        ("gold-1", "staging", "gold-1.staging"),
        ("gold-2", "staging", "gold-2.staging"),
        ("plain-1", "staging", "plain-1.staging"),
        (None, "shared", "shared"),
    }
    # the resource steps of each target are lines of their own, named by the target
    creates = {r["stack"] for r in records if r["message"] != "started" and "create" in json.dumps(r)}
    assert STACKS <= creates, creates


def test_github_step_summary_holds_the_runs_table(shared_fleet):
    summary = shared_fleet.step_summary.read_text()
    lines = summary.splitlines()
    assert lines[0] == "### runner up: 3 succeeded"
    assert "Run `4242.2`, release `r1`" in lines
    assert "| target | status | changes | duration | error |" in lines
    rows = {
        line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:3]
        for line in lines
        if line.startswith("| ") and "." in line.split(" | ")[0] or line.startswith("| shared")
    }
    assert rows["shared (shared stack)"][0] == "succeeded"
    for stack in STACKS:
        assert rows[stack] == ["succeeded", "9 create"], rows


def test_notify_slack_posts_one_message_with_the_runs_summary(shared_fleet, hook):
    [message] = hook.received("/slack/deploy")
    header, section = message["blocks"][:2]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "emoji": True, "text": ":white_check_mark: runner up: all targets OK"},
    }
    assert section["text"]["text"].splitlines()[0] == "*Run* `4242.2` · *Release* `r1` · *Exit code* 0"
    assert "3 succeeded" in section["text"]["text"]
    assert len(message["blocks"]) == 2  # no failure blocks
    assert message["text"].startswith(":white_check_mark: runner up: all targets OK (run 4242.2)")


# --------------------------------------------------------------------------- read-only commands


def test_tenants_list(shared_fleet):
    listed = shared_fleet.run("tenants", "list", "--json")
    assert listed.code == 0, listed.stderr
    assert json.loads(listed.stdout) == [
        {"id": t["id"], "name": t["name"], "environments": ["staging"], "tags": t["tags"], "enabled": True}
        for t in SHARED_TENANTS
    ]
    table = shared_fleet.run("tenants", "list")
    assert table.code == 0
    row = next(line for line in table.stderr.splitlines() if "gold-2" in line)
    assert "Gold 2" in row and "tier=gold, region=us" in row and "yes" in row


def test_status_json_and_history_limit_read_the_ledger(shared_fleet):
    status = shared_fleet.run("status", "--json")
    assert status.code == 0, status.stderr
    doc = json.loads(status.stdout)
    cells = {c["stack"]: c for row in doc["tenants"] for c in row["cells"].values() if c}
    assert {s: (cells[s]["status"], cells[s]["release"]) for s in STACKS} == {s: ("succeeded", "r1") for s in STACKS}
    history = shared_fleet.run("history", "--tenant", "gold-1", "--env", "staging", "--limit", "1", "--json")
    assert history.code == 0, history.stderr
    [newest] = json.loads(history.stdout)
    assert (newest["stack"], newest["status"], newest["release"]) == ("gold-1.staging", "succeeded", "r1")


def test_tag_selects_the_tenants_with_every_tag_and_runner_notify_sends_a_webhook(shared_fleet, hook):
    preview = shared_fleet.run(
        "preview",
        "--tag",
        "tier=gold",
        "--tag",
        "region=us",
        "--json",
        "--detailed-exitcode",
        env={"RUNNER_NOTIFY": f"webhook:{hook.url('/env/preview')}", "NO_PROXY": "127.0.0.1"},
    )
    assert preview.code == 0, preview.stderr[-2000:]
    assert set(preview.by_stack()) == {"gold-2.staging"}  # every tag must match
    _no_changes(preview)
    [message] = hook.received("/env/preview")
    assert message == {
        "run_id": preview.json["run_id"],
        "command": "preview",
        "release": preview.json["release"],
        "counts": {"total": 1, "succeeded": 1},
        "exit_code": 0,
        "failures": [],
    }


def test_exclude_tenant_leaves_it_out(shared_fleet):
    preview = shared_fleet.run("preview", "--all-tenants", "--exclude-tenant", "gold-2", "--json")
    assert preview.code == 0, preview.stderr[-2000:]
    assert set(preview.by_stack()) == {"gold-1.staging", "plain-1.staging"}


def test_preview_detailed_exitcode_is_3_for_a_config_change_and_names_it(shared_fleet):
    changed = json.loads(json.dumps(SHARED_TENANTS))
    changed[2]["config"] = {"domain": "plain-1.example.org"}
    registry = shared_fleet.root / "changed.yaml"
    doc = YAML(typ="safe").load(shared_fleet.registry_path.read_text())
    doc["tenants"] = changed
    with open(registry, "w") as handle:
        YAML().dump(doc, handle)
    preview = shared_fleet.run("preview", "--all-tenants", "--registry", str(registry), "--detailed-exitcode", "--json")
    assert preview.code == 3, preview.stderr[-2000:]
    rows = preview.by_stack()
    assert rows["plain-1.staging"]["changes"].get("update", 0) >= 1, rows["plain-1.staging"]["changes"]
    assert all(set(rows[s]["changes"]) <= {"same"} for s in ("gold-1.staging", "gold-2.staging"))


def _table_registry(box, url: str) -> str:
    """The shared fleet's registry as a database table plus a base file (defaults, environments, rollout)."""
    doc = YAML(typ="safe").load(box.registry_path.read_text())
    base = box.root / "base.yaml"
    with open(base, "w") as handle:
        YAML().dump({k: v for k, v in doc.items() if k != "tenants"}, handle)
    write_registry_table(url, doc["tenants"])
    return f"{url}?table=tenants&base={base}"


def _assert_same_fleet(box, registry: str) -> None:
    listed = box.run("tenants", "list", "--json", "--registry", registry)
    assert listed.code == 0, listed.stderr
    assert [t["id"] for t in json.loads(listed.stdout)] == ["gold-1", "gold-2", "plain-1"]
    preview = box.run("preview", "--tenant", "gold-2", "--registry", registry, "--detailed-exitcode", "--json")
    assert preview.code == 0, preview.stdout or preview.stderr[-2000:]  # same stack, same config: no change
    assert set(preview.by_stack()) == {"gold-2.staging"}
    _no_changes(preview)


def test_registry_in_a_sqlite_table(shared_fleet):
    _assert_same_fleet(shared_fleet, _table_registry(shared_fleet, f"sqlite:///{shared_fleet.root / 'tenants.db'}"))


@pytest.mark.postgres
def test_registry_in_a_postgresql_table(shared_fleet, postgres_server):
    url = postgres_server.url(postgres_server.create_database("registry_shared_fleet"))
    _assert_same_fleet(shared_fleet, _table_registry(shared_fleet, url))


# --------------------------------------------------------------------------- ups that change nothing


def test_wave_runs_one_wave_only(shared_fleet):
    up = shared_fleet.run("up", "--all-tenants", "--release", "r1", "--wave", "gold", "--yes", "--json")
    assert up.code == 0, up.stderr[-2000:]
    assert set(up.by_stack()) == {"gold-1.staging", "gold-2.staging"}
    assert [w["wave"] for w in up.json["waves"]] == ["gold"]
    _no_changes(up)


def test_strategy_all_at_once_ignores_the_rollouts_waves(shared_fleet):
    up = shared_fleet.run("up", "--all-tenants", "--release", "r1", "--strategy", "all-at-once", "--yes", "--json")
    assert up.code == 0, up.stderr[-2000:]
    assert set(up.by_stack()) == STACKS
    assert [w["targets"] for w in up.json["waves"]] in ([], [3]), up.json["waves"]
    assert all("wave" not in t["details"] or t["details"]["wave"] not in ("gold", "rest") for t in up.json["targets"])
    _no_changes(up)
