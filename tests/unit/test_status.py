"""Fleet status from the ledger alone: the grid, JSON, the terminal table, HTML."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from rich.console import Console
from sqlalchemy import event

from runner.ledger import Ledger, _dumps, _ts
from runner.ledger import operations as operations_table
from runner.status import (
    DESTROYED,
    NEVER,
    NOT_CONNECTED,
    FleetStatus,
    fleet_status,
    format_age,
    render_html,
    render_orphans_table,
    render_table,
    write_html,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)
ENVS = ("testing", "staging", "production")
SECRET = "hunter2-SECRET-value"
EVIL_NAME = '<script>alert("x")</script> & Co'
EVIL_ERROR = '"><img src=x onerror=alert(1)> [bold]markup[/bold] failed'


def tenant(id, environments, *, name=None, tags=None, enabled=True):
    return SimpleNamespace(
        id=id,
        name=name or id,
        environments=tuple(environments),
        tags=tags or {},
        enabled=enabled,
        config={"domain": "x.example"},
        secrets={"db_password": {"env": "X"}},
    )


def registry(tenants, environments=ENVS):
    return SimpleNamespace(environment_names=tuple(environments), tenants=list(tenants))


@pytest.fixture
def ledger(tmp_path):
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        yield ledger


def rec(ledger, stack, operation, status, at, **kw):
    tenant_id, _, env = stack.partition(".")
    if not env:
        tenant_id, env = None, None
    kw.setdefault("config_snapshot", {"db_password": SECRET, "domain": "x.example"})
    return ledger.record(
        "run-" + at.strftime("%H%M%S"),
        tenant_id,
        env,
        stack,
        operation,
        status,
        started=at,
        ended=at + timedelta(seconds=30),
        **kw,
    )


DB_URN = "urn:pulumi:customer-1.production::runner::runner:local:Backend$runner:local:Database::customer-1-db"


def seed_fleet(ledger):
    """A small fleet covering every kind of cell; returns the registry."""
    h = timedelta(hours=1)
    # customer-1: staging deployed and drifted; production failed after a success
    rec(ledger, "customer-1.staging", "up", "succeeded", T0 + h, release="v2", changes={"create": 3})
    rec(
        ledger,
        "customer-1.staging",
        "drift",
        "drifted+pending",
        T0 + 2 * h,
        release="v2",
        details={
            "drift": [{"urn": "urn:x", "name": "customer-1-db", "component": "runner:local:Backend", "op": "update"}],
            "pending": [
                {"urn": "urn:y", "name": "customer-1-site", "component": "runner:local:Frontend", "op": "update"}
            ],
        },
    )
    rec(ledger, "customer-1.production", "up", "succeeded", T0, release="v1")
    rec(
        ledger,
        "customer-1.production",
        "up",
        "failed",
        T0 + 3 * h,
        release="v2",
        error="migration 0003 failed:\n  syntax error",
        error_resource=DB_URN,
        error_component="runner:local:Backend",
    )
    rec(ledger, "customer-1.production", "drift", "in-sync", T0 + 1 * h, release="v1")
    # customer-1 is not connected to testing any more: an orphaned stack
    rec(ledger, "customer-1.testing", "up", "succeeded", T0, release="v0")
    # customer-2: testing ok, staging only previewed (never deployed), production locked
    rec(ledger, "customer-2.testing", "up", "succeeded", T0 + 4 * h, release="v2")
    rec(ledger, "customer-2.staging", "preview", "succeeded", T0 + 4 * h, release="v2")
    rec(
        ledger,
        "customer-2.production",
        "up",
        "locked",
        T0 + 5 * h,
        release="v2",
        error="still locked by another operation after 60s",
    )
    # customer-3: disabled, rolled back
    rec(ledger, "customer-3.production", "up", "failed", T0, release="v2", error="boom")
    rec(ledger, "customer-3.production", "rollback", "succeeded", T0 + h, release="v1")
    # evil: untrusted name and error, blocked in testing, destroyed in production
    rec(ledger, "evil-corp.testing", "up", "blocked", T0 + h, release="v2", error=EVIL_ERROR)
    rec(ledger, "evil-corp.production", "up", "succeeded", T0, release="v1")
    rec(ledger, "evil-corp.production", "destroy", "succeeded", T0 + 2 * h)
    # offboarded tenant, and the shared stack
    rec(ledger, "gone-tenant.production", "up", "succeeded", T0, release="v1")
    rec(ledger, "shared", "up", "succeeded", T0 + h, release="v2")
    return registry(
        [
            tenant("customer-1", ["staging", "production"], name="Customer One", tags={"tier": "premium"}),
            tenant("customer-2", ENVS, tags={"tier": "standard"}),
            tenant("customer-3", ["production"], enabled=False, tags={"tier": "standard"}),
            tenant("evil-corp", ["testing", "production"], name=EVIL_NAME, tags={"tier": "premium", "x": "<b>"}),
        ]
    )


@pytest.fixture
def fleet(ledger) -> FleetStatus:
    return fleet_status(ledger, seed_fleet(ledger), now=NOW)


# --------------------------------------------------------------------------
# the grid


def test_grid_cells(fleet):
    assert fleet.environments == ENVS
    assert [r.id for r in fleet.tenants] == ["customer-1", "customer-2", "customer-3", "evil-corp"]

    c = fleet.cell("customer-1", "testing")
    assert c.status == NOT_CONNECTED and not c.connected

    c = fleet.cell("customer-1", "staging")
    assert (c.status, c.operation, c.release) == ("succeeded", "up", "v2")
    assert c.when == T0 + timedelta(hours=1, seconds=30)
    assert c.drift.status == "drifted+pending"
    assert c.drift.drifted == ("Backend/customer-1-db",)
    assert c.drift.pending == ("update customer-1-site",)
    assert c.drift.summary == "drifted: Backend/customer-1-db; pending: update customer-1-site"
    assert c.error is None
    assert c.statuses == ("succeeded", "drifted+pending")

    c = fleet.cell("customer-1", "production")
    assert (c.status, c.release) == ("failed", "v2")
    assert c.error == "Backend (customer-1-db): migration 0003 failed: syntax error"
    assert c.drift.status == "in-sync" and c.drift.summary == ""

    assert fleet.cell("customer-2", "testing").status == "succeeded"
    assert fleet.cell("customer-2", "staging").status == NEVER  # a preview is no deployment
    c = fleet.cell("customer-2", "production")
    assert c.status == "locked" and c.error == "still locked by another operation after 60s"

    row = fleet.row("customer-3")
    assert not row.enabled
    c = row.cell("production")
    assert (c.status, c.operation, c.release, c.error) == ("succeeded", "rollback", "v1", None)

    assert fleet.cell("evil-corp", "testing").status == "blocked"
    assert fleet.cell("evil-corp", "staging").status == NOT_CONNECTED
    c = fleet.cell("evil-corp", "production")
    assert (c.status, c.operation) == (DESTROYED, "destroy")


def test_orphans_and_untenanted(fleet):
    assert [c.stack for c in fleet.orphans] == ["customer-1.testing", "gone-tenant.production"]
    assert all(c.status == "succeeded" for c in fleet.orphans)
    assert [c.stack for c in fleet.untenanted] == ["shared"]
    assert fleet.untenanted[0].release == "v2"


def test_counts(fleet):
    counts = fleet.counts
    assert counts["targets"] == 8
    assert counts["succeeded"] == 3 and counts["failed"] == 1 and counts["never"] == 1
    assert counts["locked"] == 1 and counts["blocked"] == 1 and counts["destroyed"] == 1
    assert counts["drift:drifted+pending"] == 1 and counts["drift:in-sync"] == 1
    assert counts["orphans"] == 2


def test_to_dict_is_one_json_document_without_config_or_secrets(fleet):
    text = fleet.to_json()
    data = json.loads(text)
    assert set(data) == {"generated", "environments", "counts", "tenants", "orphans", "untenanted"}
    assert data["generated"] == "2024-05-02T12:00:00+00:00"
    t1 = data["tenants"][0]
    assert t1["id"] == "customer-1" and t1["tags"] == {"tier": "premium"} and t1["enabled"] is True
    assert list(t1["cells"]) == list(ENVS)
    prod = t1["cells"]["production"]
    assert prod["status"] == "failed" and prod["release"] == "v2"
    assert prod["age_s"] == int((NOW - (T0 + timedelta(hours=3, seconds=30))).total_seconds())
    assert prod["error"].startswith("Backend (customer-1-db)")
    assert t1["cells"]["testing"]["status"] == "n/a"
    assert t1["cells"]["staging"]["drift"]["drifted"] == ["Backend/customer-1-db"]
    assert data["orphans"][1]["stack"] == "gone-tenant.production"
    for forbidden in (SECRET, "db_password", "x.example", "config", "secrets"):
        assert forbidden not in text


def test_two_queries_whatever_the_fleet_size(ledger):
    reg = seed_fleet(ledger)
    calls = []

    class Spy:
        def latest_by_stack(self, *args, **kwargs):
            calls.append(("latest_by_stack", args, kwargs))
            return ledger.latest_by_stack(*args, **kwargs)

        def __getattr__(self, name):  # any per-stack query would show up here
            calls.append((name,))
            return getattr(ledger, name)

    statements = []
    listener = lambda *a: statements.append(a[2])  # noqa: E731
    event.listen(ledger.engine, "before_cursor_execute", listener)
    try:
        fleet_status(Spy(), reg, now=NOW)
    finally:
        event.remove(ledger.engine, "before_cursor_execute", listener)
    assert [c[0] for c in calls] == ["latest_by_stack", "latest_by_stack"]
    selects = [s for s in statements if "operations" in s and s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2


def test_empty_ledger_and_registry(ledger):
    empty = fleet_status(ledger, registry([]), now=NOW)
    assert empty.tenants == [] and empty.orphans == [] and empty.counts["targets"] == 0
    html = render_html(empty)
    assert "The registry lists no tenants." in html
    fresh = fleet_status(ledger, registry([tenant("customer-1", ["staging"])]), now=NOW)
    assert fresh.cell("customer-1", "staging").status == NEVER


def test_drift_error_surfaces_when_newer_than_the_deployment(ledger):
    rec(ledger, "customer-1.staging", "up", "succeeded", T0, release="v1")
    rec(
        ledger,
        "customer-1.staging",
        "drift",
        "error",
        T0 + timedelta(hours=1),
        error="refresh failed",
        error_component="runner:local:Frontend",
    )
    fleet = fleet_status(ledger, registry([tenant("customer-1", ["staging"])]), now=NOW)
    c = fleet.cell("customer-1", "staging")
    assert c.status == "succeeded"
    assert c.drift.status == "error"
    assert c.error == "Frontend: refresh failed"


def test_format_age():
    assert format_age(None) == ""
    assert format_age(-5) == "0s"
    assert format_age(59) == "59s"
    assert format_age(60) == "1m"
    assert format_age(2 * 3600 + 5) == "2h"
    assert format_age(3 * 86400) == "3d"
    assert format_age(800 * 86400) == "2y"


# --------------------------------------------------------------------------
# 1,000 tenants x 3 environments


SCALE_STATUSES = ("succeeded", "failed", "locked", "blocked", "not-started", "skipped")


def _expected(i: int, env_index: int):
    """Deterministic scenario of tenant i in environment env_index."""
    connected = (i % 4 != 0) or env_index != 0  # every 4th tenant skips testing
    if not connected:
        return None
    kind = (i + env_index) % 9
    if kind == 8:
        return (NEVER, None, None)
    if kind == 7:
        return (DESTROYED, None, None)
    status = SCALE_STATUSES[kind % len(SCALE_STATUSES)]
    drift = ("drifted", "in-sync")[i % 2] if kind in (0, 1) else None
    return (status, f"r{i % 13}", drift)


def _bulk_seed(ledger, n: int):
    """Insert rows in one transaction (Ledger.record commits one row at a time)."""
    rows = []
    tenants = []

    def row(tenant_id, env, operation, status, at, *, release=None, error=None, details=None):
        rows.append(
            {
                "run_id": f"run-{at.timestamp():.0f}",
                "tenant": tenant_id,
                "environment": env,
                "stack": f"{tenant_id}.{env}",
                "operation": operation,
                "release": release,
                "program_commit": None,
                "config_fingerprint": None,
                "config_snapshot": _dumps({"db_password": SECRET}),
                "status": status,
                "started": _ts(at),
                "ended": _ts(at + timedelta(seconds=5)),
                "changes": None,
                "error": error,
                "error_resource": None,
                "error_component": None,
                "details": _dumps(details) if details else None,
                "host": "h",
                "pid": 1,
            }
        )

    for i in range(n):
        tid = f"tenant-{i:04d}"
        envs = []
        for e, env in enumerate(ENVS):
            exp = _expected(i, e)
            if exp is None:
                if i % 8 == 0:  # an old deployment of a disconnected environment: orphan
                    row(tid, env, "up", "succeeded", T0, release="old")
                continue
            envs.append(env)
            status, release, drift = exp
            if status == NEVER:
                row(tid, env, "preview", "succeeded", T0)
                continue
            # an older, different row first: the newest must win
            row(tid, env, "up", "failed", T0, release="r-old", error="old failure")
            if drift:
                row(
                    tid,
                    env,
                    "drift",
                    "drifted" if drift == "drifted" else "in-sync",
                    T0 + timedelta(minutes=1),
                    details={"drift": [{"name": f"{tid}-db", "component": "runner:local:Backend"}]}
                    if drift == "drifted"
                    else None,
                )
            if status == DESTROYED:
                row(tid, env, "destroy", "succeeded", T0 + timedelta(minutes=2))
            else:
                row(
                    tid,
                    env,
                    "up",
                    status,
                    T0 + timedelta(minutes=2),
                    release=release,
                    error=f"{tid} {env} broke" if status == "failed" else None,
                )
        tenants.append(tenant(tid, envs, tags={"tier": ("premium", "standard")[i % 2]}, enabled=i % 50 != 0))
    with ledger.engine.begin() as conn:
        conn.execute(operations_table.insert(), rows)
    return registry(tenants)


def test_fleet_of_1000_tenants_by_3_environments(ledger):
    reg = _bulk_seed(ledger, 1000)
    fleet = fleet_status(ledger, reg, now=NOW)
    assert len(fleet.tenants) == 1000
    checked = 0
    for i, row in enumerate(fleet.tenants):
        assert row.id == f"tenant-{i:04d}"
        assert row.enabled == (i % 50 != 0)
        for e, env in enumerate(ENVS):
            cell = row.cell(env)
            exp = _expected(i, e)
            if exp is None:
                assert cell.status == NOT_CONNECTED
                continue
            status, release, drift = exp
            assert cell.status == status, (row.id, env)
            assert cell.release == release, (row.id, env)
            assert (cell.drift.status if cell.drift else None) == drift, (row.id, env)
            if drift == "drifted":
                assert cell.drift.drifted == (f"Backend/{row.id}-db",)
            assert cell.error == (f"{row.id} {env} broke" if status == "failed" else None)
            checked += 1
    assert fleet.counts["targets"] == checked
    assert len(fleet.orphans) == sum(1 for i in range(1000) if i % 4 == 0 and i % 8 == 0)
    assert all(c.stack.endswith(".testing") and c.release == "old" for c in fleet.orphans)
    # every output format copes with the whole fleet
    assert SECRET not in fleet.to_json()
    html = render_html(fleet)
    assert html.count('<tr class="tenant') == 1000
    assert SECRET not in html


# --------------------------------------------------------------------------
# terminal table


def _render(renderable, width=220) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_table(fleet):
    table = render_table(fleet)
    assert [c.header for c in table.columns] == ["tenant", *ENVS]
    assert table.row_count == 4
    text = _render(table)
    assert "customer-1" in text and "Customer One" in text
    assert "drifted+pending" in text and "Backend/customer-1-db" in text
    assert "Backend (customer-1-db): migration 0003" in text
    assert "destroyed" in text and "disabled" in text and "never" in text
    # untrusted text is shown as is, never interpreted as rich markup
    assert "[bold]markup[/bold]" in text


def test_render_table_colours(fleet):
    console = Console(record=True, width=220, force_terminal=True, color_system="standard")
    console.print(render_table(fleet))
    ansi = console.export_text(styles=True)
    assert "\x1b[1;31mfailed" in ansi  # bold red
    assert "\x1b[32msucceeded" in ansi  # green


def test_render_orphans_table(fleet):
    text = _render(render_orphans_table(fleet))
    assert "gone-tenant.production" in text and "orphan" in text
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│")}
    assert "shared" in rows["shared"].split("│")[2]  # the shared stack is labelled as such, not untenanted
    assert render_orphans_table(FleetStatus(NOW, ENVS)) is None


# --------------------------------------------------------------------------
# HTML


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_and_escaped(fleet, tmp_path):
    path = write_html(fleet, tmp_path / "out" / "fleet.html", run_id="run-<42>")
    assert path == tmp_path / "out" / "fleet.html"
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind

    # no external reference of any kind
    assert not re.search(r"https?://", html)
    assert "url(" not in html and "@import" not in html
    parser = _Collect()
    parser.feed(html)
    for tag, attrs in parser.tags:
        assert "src" not in attrs and "href" not in attrs, (tag, attrs)
        assert tag not in ("link", "iframe", "img", "object", "embed", "base"), tag
    scripts = [t for t, _ in parser.tags if t == "script"]
    assert len(scripts) == 1
    assert "Content-Security-Policy" in html and "default-src 'none'" in html

    # untrusted strings are escaped
    assert "<script>alert(" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in html
    assert "<img src=x" not in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "run-&lt;42&gt;" in html
    assert "x=&lt;b&gt;" in html

    # nothing but the listed fields
    for forbidden in (SECRET, "db_password", "x.example"):
        assert forbidden not in html


def test_html_grid_structure(fleet):
    html = render_html(fleet)
    parser = _Collect()
    parser.feed(html)
    rows = {a["data-tenant"]: a for t, a in parser.tags if t == "tr" and "data-tenant" in a}
    assert list(rows) == ["customer-1", "customer-2", "customer-3", "evil-corp"]
    assert json.loads(rows["customer-1"]["data-tags"]) == ["tier=premium"]
    assert set(json.loads(rows["customer-1"]["data-statuses"])) == {"succeeded", "drifted+pending", "failed", "in-sync"}
    assert rows["customer-3"]["data-enabled"] == "false" and "disabled" in rows["customer-3"]["class"]
    cells = [a for t, a in parser.tags if t == "td" and "data-env" in a]
    assert len(cells) == 4 * 3
    assert sum(1 for a in cells if a["data-status"] == "n/a") == 4
    assert any("s-drifted" not in a["class"] and a.get("data-drift") == "drifted+pending" for a in cells)
    # per-cell details: release, error line and drift summary
    assert html.count("<details>") == 8
    assert "Backend (customer-1-db): migration 0003 failed: syntax error" in html
    assert "drifted: Backend/customer-1-db; pending: update customer-1-site" in html
    # orphans and untenanted stacks are listed separately
    assert 'id="orphans-table"' in html and 'data-stack="gone-tenant.production"' in html
    assert 'id="untenanted-table"' in html and 'data-stack="shared"' in html
    # the filter controls offer the tags and the statuses present
    assert '<option value="tier=premium">' in html
    for status in ("failed", "locked", "drifted+pending", "never", "destroyed"):
        assert f'value="{status}"' in html


# --------------------------------------------------------------------------
# #22.10: drift shows in the cell's colour; ages say when they were computed


def _css_rules(html: str) -> list[tuple[list[set[str]], dict[str, str]]]:
    """The page's CSS rules: (selectors as sets of classes, declarations)."""
    css = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    rules = []
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        decls = dict(
            (k.strip(), v.replace("!important", "").strip())
            for k, _, v in (d.partition(":") for d in body.split(";"))
            if v.strip()
        )
        sets = [
            set(re.findall(r"\.([\w-]+)", s))
            for s in selectors.split(",")
            if re.fullmatch(r"\s*(td)?(\.[\w-]+)+\s*", s)
        ]
        rules.append((sets, decls))
    return rules


def _computed(html: str, classes: set[str], prop: str) -> str | None:
    """The value of `prop` for a <td> with these classes: the most specific
    matching class selector wins, later rules on a tie (the CSS cascade)."""
    best, value = (-1, -1), None
    for order, (sets, decls) in enumerate(_css_rules(html)):
        for wanted in sets:
            if wanted and wanted <= classes and prop in decls and (len(wanted), order) >= best:
                best, value = (len(wanted), order), decls[prop]
    return value


def _cell_classes(html: str) -> dict[str, set[str]]:
    parser = _Collect()
    parser.feed(html)
    rows, current = {}, None
    for tag, attrs in parser.tags:
        if tag == "tr" and "data-tenant" in attrs:
            current = attrs["data-tenant"]
        elif tag == "td" and "data-env" in attrs and current:
            rows[f"{current}.{attrs['data-env']}"] = set(attrs["class"].split())
    return rows


def test_a_drifted_or_pending_cell_is_not_green(ledger):
    """A drifted cell stayed green (its class followed the deployment only)."""
    h = timedelta(hours=1)
    for tid in ("drifted", "pending", "both", "clean", "stale"):
        rec(ledger, f"{tid}.staging", "up", "succeeded", T0, release="v1")
    rec(ledger, "drifted.staging", "drift", "drifted", T0 + h, details={"drift": [{"name": "db", "op": "update"}]})
    rec(ledger, "pending.staging", "drift", "pending", T0 + h, details={"pending": [{"name": "site", "op": "update"}]})
    rec(ledger, "both.staging", "drift", "drifted+pending", T0 + h)
    rec(ledger, "clean.staging", "drift", "in-sync", T0 + h)
    rec(ledger, "stale.staging", "drift", "drifted", T0 - h)  # checked before the last deploy: no longer says much
    reg = registry([tenant(t, ["staging"]) for t in ("drifted", "pending", "both", "clean", "stale")], ["staging"])
    html = render_html(fleet_status(ledger, reg, now=NOW))
    cells = _cell_classes(html)
    assert "d-drifted" in cells["drifted.staging"] and "d-pending" in cells["pending.staging"]
    assert "d-drifted-pending" in cells["both.staging"]
    assert not {c for c in cells["clean.staging"] | cells["stale.staging"] if c.startswith("d-")}

    def colours(stack):
        return _computed(html, cells[stack], "background"), _computed(html, cells[stack], "border-left-color")

    green = colours("clean.staging")
    assert green[0] == "var(--ok-bg)" and green[1] == "var(--ok)"
    assert colours("stale.staging") == green
    drifted, pending, both = colours("drifted.staging"), colours("pending.staging"), colours("both.staging")
    assert drifted[0] != green[0] and drifted[1] != green[1]
    assert pending[0] != green[0] and pending[1] != green[1]
    assert pending != drifted and both == drifted
    # a failed deployment stays red whatever the drift check says
    rec(ledger, "drifted.staging", "up", "failed", T0 + 2 * h, error="boom")
    rec(ledger, "drifted.staging", "drift", "drifted", T0 + 3 * h)
    html = render_html(fleet_status(ledger, reg, now=NOW))
    cells = _cell_classes(html)
    assert _computed(html, cells["drifted.staging"], "background") == "var(--bad-bg)"


def test_html_says_when_ages_were_computed(fleet):
    """Ages are computed when the page is generated: the page says so (and the
    script, which refreshes them when the page is opened, says so too)."""
    html = render_html(fleet)
    assert re.search(
        r"Generated at <time datetime=\"2024-05-02T12:00:00\+00:00\">2024-05-02 12:00:00 UTC</time>; "
        r"<span id=\"ages-as-of\">ages as of then</span>",
        html,
    ), html[:3000]
    assert 'getElementById("ages-as-of")' in html
