"""The demo behind docs/dashboard.png: a clean ledger for the example registry
(stacks/tenants.yaml), a realistic day of a rollout, the HTML dashboard and,
with --screenshot, a picture of it taken by headless Chromium.

    .venv/bin/python scripts/dashboard_demo.py --html /tmp/fleet.html --screenshot docs/dashboard.png

Nothing is deployed: the rows are written into a fresh SQLite ledger in a
temporary directory, timed relative to now (the page shows ages).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from runner.ledger import Ledger, utcnow  # noqa: E402
from runner.registry import load_registry  # noqa: E402
from runner.status import fleet_status, write_html  # noqa: E402

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
BACKEND = "runner:local:Backend"
FRONTEND = "runner:local:Frontend"


def seed(ledger: Ledger) -> None:
    """Yesterday 2026.11.1 everywhere; today 2026.11.2 through testing and
    staging, failing on customer-1's production database migration, which
    halted the rollout before customer-3; then a nightly drift check: one
    out-of-band edit and one pending change in staging."""
    now = utcnow()
    runs = {}

    def rec(stack, operation, status, hours_ago, **kw):
        tenant, _, env = stack.partition(".")
        at = now - timedelta(hours=hours_ago)
        start = math.ceil(hours_ago)  # a run starts on the hour before its rows
        run = runs.setdefault(start, f"{now - timedelta(hours=start):%Y%m%dT%H%M%S}-demo")
        ledger.record(
            run,
            tenant if env else None,
            env or None,
            stack,
            operation,
            status,
            started=at - timedelta(minutes=1),
            ended=at,
            **kw,
        )

    targets = (
        "internal-qa.testing",
        "customer-1.staging",
        "customer-2.staging",
        "customer-1.production",
        "customer-2.production",
        "customer-3.production",
    )
    rec("shared", "up", "succeeded", 26, release="2026.11.1")
    for stack in targets:
        rec(stack, "up", "succeeded", 26, release="2026.11.1", changes={"create": 9})
    rec("shared", "up", "succeeded", 5, release="2026.11.2")
    rec("internal-qa.testing", "up", "succeeded", 5, release="2026.11.2", changes={"update": 2})
    rec("customer-1.staging", "up", "succeeded", 4.5, release="2026.11.2", changes={"update": 2})
    rec("customer-2.staging", "up", "succeeded", 4.5, release="2026.11.2", changes={"update": 2})
    rec(
        "customer-1.production",
        "up",
        "failed",
        4,
        release="2026.11.2",
        error='Exception: migration 004_orders_index.sql failed: near "INDEXX": syntax error',
        error_resource="urn:pulumi:customer-1.production::runner::runner:local:Backend$runner:local:Database::backend-db",
        error_component=BACKEND,
    )
    rec("customer-2.production", "up", "succeeded", 4, release="2026.11.2", changes={"update": 2})
    rec(
        "customer-3.production",
        "up",
        "not-started",
        4,
        release="2026.11.2",
        error="rollout halted: wave early exceeded its failure tolerance (1 failed)",
    )
    rec("internal-qa.testing", "drift", "in-sync", 1)
    rec(
        "customer-1.staging",
        "drift",
        "drifted",
        1,
        details={
            "drift": [{"name": "frontend-site", "component": FRONTEND, "op": "update", "keys": ["content_hash"]}],
            "pending": [],
        },
    )
    rec(
        "customer-2.staging",
        "drift",
        "pending",
        1,
        details={"drift": [], "pending": [{"name": "backend-app", "component": BACKEND, "op": "update"}]},
    )
    rec("customer-2.production", "drift", "in-sync", 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, help="write the dashboard here (default: a temporary file)")
    parser.add_argument("--screenshot", type=Path, help="write a 1400x900 PNG of the dashboard here")
    parser.add_argument(
        "--fragment",
        default="#open=failed,drifted,pending",
        help="URL fragment for the screenshot (filters, open cells)",
    )
    args = parser.parse_args()
    registry = load_registry(PROJECT_DIR / "stacks" / "tenants.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        with Ledger(f"sqlite:///{Path(tmp) / 'ledger.db'}") as ledger:
            seed(ledger)
            status = fleet_status(ledger, registry)
        html = write_html(status, args.html or Path(tmp) / "fleet.html")
        print(f"dashboard: {html}", file=sys.stderr)
        if args.screenshot:
            profile = Path(tmp) / "profile"
            profile.mkdir()
            subprocess.run(
                [
                    CHROMIUM,
                    *FLAGS,
                    f"--user-data-dir={profile}",
                    f"--screenshot={args.screenshot.resolve()}",
                    "--window-size=1400,900",
                    "--virtual-time-budget=2000",
                    html.resolve().as_uri() + args.fragment,
                ],
                check=True,
                capture_output=True,
                env={**os.environ, "HOME": str(profile)},
                timeout=120,
            )
            print(f"screenshot: {args.screenshot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
