"""The HTML fleet dashboard in a real headless Chromium (Debian package
``chromium``): filters applied from the URL fragment, per-cell details, a
screenshot.  No Python browser driver: ``--dump-dom`` gives the DOM after the
page's script ran, ``--screenshot`` the picture.

Chromium is a test dependency (scripts/ensure-test-deps.sh installs it): when
it is missing this test FAILS, it never skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest

from runner.ledger import Ledger, utcnow
from runner.status import fleet_status, write_html

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("RUNNER_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)
ENVS = ("testing", "staging", "production")
EVIL = '<img src=x onerror="document.title=1"> Evil & Co'


def chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"headless Chromium not found at {CHROMIUM}: install the Debian package `chromium` "
            "(apt-get install -y chromium, or scripts/ensure-test-deps.sh); this test never skips",
            pytrace=False,
        )
    return CHROMIUM


def run_chromium(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    profile = Path(os.path.realpath(tmp_path)) / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    proc = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HOME": str(profile)},
    )
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def tenant(tid, envs, *, name=None, tags=None, enabled=True):
    return SimpleNamespace(
        id=tid, name=name or tid.replace("-", " ").title(), environments=tuple(envs), tags=tags or {}, enabled=enabled
    )


def seed(ledger: Ledger):
    """A realistic small fleet, timed relative to now (the page shows ages)."""
    now = utcnow()

    def rec(stack, operation, status, hours_ago, **kw):
        tid, _, env = stack.partition(".")
        at = now - timedelta(hours=hours_ago)
        kw.setdefault("config_snapshot", {"db_password": "never-shown-SECRET"})
        ledger.record(
            f"run-{int(hours_ago * 10)}",
            tid if env else None,
            env or None,
            stack,
            operation,
            status,
            started=at - timedelta(minutes=2),
            ended=at,
            **kw,
        )

    backend = "runner:local:Backend"
    db_urn = "urn:pulumi:x::runner::runner:local:Backend$runner:local:Database::{}-db"
    tenants = [
        tenant("acme", ENVS, name="ACME Corporation", tags={"tier": "premium", "region": "eu"}),
        tenant("globex", ENVS, tags={"tier": "premium", "region": "us"}),
        tenant("initech", ("staging", "production"), tags={"tier": "standard", "region": "eu"}),
        tenant("umbrella", ("production",), tags={"tier": "standard", "region": "us"}),
        tenant("hooli", ENVS, tags={"tier": "premium", "region": "us"}),
        tenant("evil-corp", ("testing", "production"), name=EVIL, tags={"tier": "standard"}),
        tenant("stark-industries", ("staging", "production"), tags={"tier": "premium", "region": "us"}),
        tenant("wayne-enterprises", ("production",), tags={"tier": "standard"}, enabled=False),
    ]
    for t in tenants:
        for env in t.environments:
            rec(f"{t.id}.{env}", "up", "succeeded", 30, release="2024.05.1")
    rec("acme.testing", "up", "succeeded", 3, release="2024.05.2")
    rec("acme.staging", "up", "succeeded", 2, release="2024.05.2")
    rec(
        "acme.staging",
        "drift",
        "drifted",
        1,
        release="2024.05.2",
        details={
            "drift": [
                {"name": "acme-db", "component": backend, "op": "update"},
                {"name": "acme-site", "component": "runner:local:Frontend", "op": "update"},
            ],
            "pending": [],
        },
    )
    rec(
        "acme.production",
        "up",
        "failed",
        0.5,
        release="2024.05.2",
        error='migration 0007_add_index.sql failed: near "INDEXX": syntax error',
        error_resource=db_urn.format("acme"),
        error_component=backend,
    )
    rec("globex.testing", "up", "succeeded", 3, release="2024.05.2")
    rec("globex.staging", "up", "locked", 2, release="2024.05.2", error="still locked by another operation after 300s")
    rec(
        "globex.production",
        "drift",
        "pending",
        4,
        details={"drift": [], "pending": [{"name": "globex-api", "component": backend, "op": "update"}]},
    )
    rec("initech.staging", "up", "succeeded", 2, release="2024.05.2")
    rec(
        "initech.production",
        "up",
        "blocked",
        1,
        release="2024.05.2",
        error="release 2024.05.2 has not succeeded in staging for every tenant yet",
    )
    rec("hooli.production", "drift", "in-sync", 5)
    rec("hooli.testing", "destroy", "succeeded", 6)
    rec(
        "evil-corp.testing",
        "up",
        "failed",
        1,
        release="2024.05.2",
        error='<script>document.title="pwned"</script> "><b>bold</b>',
        error_component=backend,
    )
    rec("stark-industries.production", "up", "not-started", 1, release="2024.05.2", error="the shared stack failed")
    rec("wayne-enterprises.production", "rollback", "succeeded", 8, release="2024.04.9")
    rec("oscorp.production", "up", "succeeded", 48, release="2024.04.1")  # offboarded
    rec("shared", "up", "succeeded", 3, release="2024.05.2")
    # connected, never deployed
    tenants.append(tenant("cyberdyne", ("staging",), tags={"tier": "standard", "region": "eu"}))
    return SimpleNamespace(environment_names=ENVS, tenants=tenants)


@pytest.fixture
def page(tmp_path) -> Path:
    chromium()  # fail fast, before any work, when the browser is missing
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        registry = seed(ledger)
        status = fleet_status(ledger, registry)
    path = write_html(status, tmp_path / "fleet.html", run_id="run-20240501-1200")
    html = path.read_text()
    assert "never-shown-SECRET" not in html and "http://" not in html and "https://" not in html
    return path


class Dom(HTMLParser):
    """The few facts the tests need from a dumped DOM."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: dict[str, dict] = {}
        self.cells: dict[str, dict] = {}  # "tenant.env" -> the cell's attributes
        self.releases: dict[str, str] = {}  # "tenant.env" -> the release the cell shows
        self._rel: str | None = None
        self.body: dict = {}
        self.scripts = 0
        self.imgs = 0
        self.open_details: list[str] = []
        self.title = ""
        self._row: str | None = None
        self._cell: str | None = None
        self._in: list[str] = []
        self.shown = ""
        self.ages_as_of = ""
        self.feed(text)

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in self.VOID:
            self._in.append(a.get("id") or tag)
        if tag == "body":
            self.body = a
        elif tag == "script":
            self.scripts += 1
        elif tag == "img":
            self.imgs += 1
        elif tag == "tr" and "data-tenant" in a:
            self._row = a["data-tenant"]
            self.rows[self._row] = a
        elif tag == "td" and "data-env" in a:
            self._cell = f"{self._row}.{a['data-env']}"
            self.cells[self._cell] = a
        elif tag == "span" and "rel" in (a.get("class") or "").split() and self._cell:
            self._rel = self._cell
        elif tag == "details" and "open" in a:
            self.open_details.append(self._cell)

    def handle_endtag(self, tag):
        if self._in and tag not in self.VOID:
            self._in.pop()

    def handle_data(self, data):
        if self._rel:
            self.releases.setdefault(self._rel, data.strip())
            self._rel = None
        if self._in and self._in[-1] == "shown":
            self.shown += data
        if self._in and self._in[-1] == "title":
            self.title += data
        if self._in and self._in[-1] == "ages-as-of":
            self.ages_as_of += data

    def visible(self) -> set[str]:
        return {t for t, a in self.rows.items() if "hidden" not in a}


def dump(tmp_path: Path, page: Path, fragment: str = "") -> Dom:
    proc = run_chromium(tmp_path, "--dump-dom", "--virtual-time-budget=2000", page.as_uri() + fragment)
    dom = Dom(proc.stdout)
    assert dom.rows, f"no tenant rows in the dumped DOM:\n{proc.stdout[:2000]}"
    assert "data-filter" in dom.body, "the page's script did not run"
    return dom


ALL = {
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "evil-corp",
    "stark-industries",
    "wayne-enterprises",
    "cyberdyne",
}


@pytest.mark.parametrize(
    ("fragment", "visible"),
    [
        ("", ALL),
        ("#status=failed", {"acme", "evil-corp"}),
        ("#tag=tier=premium", {"acme", "globex", "hooli", "stark-industries"}),
        ("#status=failed&tag=tier=premium", {"acme"}),
        ("#status=locked,blocked,not-started", {"globex", "initech", "stark-industries"}),
        ("#status=drifted&status=pending", {"acme", "globex"}),
        ("#tag=tier=premium&tag=region=us", {"globex", "hooli", "stark-industries"}),
        ("#status=never", {"cyberdyne"}),
        ("#q=acme%20corp", {"acme"}),
        ("#status=destroyed,failed&tag=region=eu", {"acme"}),
    ],
)
def test_filters_from_the_url_fragment(tmp_path, page, fragment, visible):
    dom = dump(tmp_path, page, fragment)
    assert set(dom.rows) == ALL
    assert dom.visible() == visible
    assert dom.shown.strip() == f"{len(visible)} of {len(ALL)} tenants"


def test_untrusted_text_stays_text(tmp_path, page):
    dom = dump(tmp_path, page)
    assert dom.scripts == 1 and dom.imgs == 0  # nothing injected by names or errors
    assert dom.title.startswith("Fleet status") and "pwned" not in dom.title
    assert dom.rows["evil-corp"]["data-name"] == EVIL


def test_open_cell_details_from_the_fragment(tmp_path, page):
    dom = dump(tmp_path, page, "#status=failed&open=failed")
    assert sorted(dom.open_details) == ["acme.production", "evil-corp.testing"]


def test_screenshot(tmp_path, page):
    shot = tmp_path / "dashboard.png"
    run_chromium(
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1400,900",
        "--virtual-time-budget=2000",
        page.as_uri() + "#open=failed,drifted,locked",
    )
    assert shot.is_file(), "chromium wrote no screenshot"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 900)
    assert len(data) > 30_000, f"suspiciously small screenshot ({len(data)} bytes)"
    # A copy for looking at; docs/dashboard.png comes from scripts/dashboard_demo.py
    # (the example registry's tenants, not this test's hostile names).
    if target := os.environ.get("RUNNER_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, target)


def test_ages_say_when_they_were_computed(tmp_path, page):
    """#22.10: the page says its ages are as of generation time; the script,
    which refreshes them when the page is opened, says so instead."""
    assert "ages as of then" in page.read_text()
    dom = dump(tmp_path, page)
    assert re.fullmatch(
        r"ages as of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(when this page was opened\)", dom.ages_as_of
    ), dom.ages_as_of


@pytest.mark.xdist_group("shared_fleet")  # with tests/e2e/test_commands_shared.py: one deploy
def test_status_html_after_real_runs(tmp_path, shared_fleet):
    """`runner status --html` of a fleet the real engine deployed (conftest.shared_fleet:
    three tenants, release r1), rendered by Chromium: one row per tenant, each cell the
    deploy's status and release, the tag filter applied."""
    chromium()
    page = tmp_path / "fleet.html"
    result = shared_fleet.run("status", "--html", str(page))
    assert result.code == 0, result.stderr
    dom = dump(tmp_path, page)
    tenants = {"gold-1", "gold-2", "plain-1"}
    assert set(dom.rows) == dom.visible() == tenants
    assert dom.shown.strip() == "3 of 3 tenants"
    for tid in tenants:
        assert dom.cells[f"{tid}.staging"]["data-status"] == "succeeded", dom.cells
        assert dom.releases[f"{tid}.staging"] == "r1", dom.releases
        assert dom.cells[f"{tid}.production"]["data-status"] == "n/a"  # not a target of the tenant
    assert json.loads(dom.rows["gold-2"]["data-tags"]) == ["region=us", "tier=gold"]
    gold = dump(tmp_path, page, "#tag=tier=gold")
    assert gold.visible() == {"gold-1", "gold-2"}
