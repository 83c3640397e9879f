"""Names shared across the runner, each defined once.

The project's folder and Pulumi project name, the shared stack, which
operations count as deployments, the colour of each status, the database
URL schemes the ledger and the registry accept, and the two time helpers
(`now`, `utc`, `iso`). Imports nothing of the runner: every module may import it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

#: The checkout the runner runs from (Pulumi.yaml, stacks/, tools/).
PROJECT_DIR = Path(__file__).resolve().parent.parent
#: The Pulumi project name (`name:` in Pulumi.yaml): part of every stack's state and lock paths.
PROJECT = "runner"
#: The untenanted stack every tenant reads (Git repositories); deployed before any tenant.
SHARED_STACK = "shared"

#: Operations that deploy a release: their success makes the release "good" (a rollback's target).
RELEASE_OPERATIONS = ("up", "rollback")
#: Operations that change what a stack holds: the latest one is a status cell's "deployment".
DEPLOYMENT_OPERATIONS = (*RELEASE_OPERATIONS, "destroy")

#: The colour (rich style) of each operation status, in the order status counts are shown.
STATUS_STYLES = {
    "succeeded": "green",
    "in-sync": "green",
    "failed": "bold red",
    "error": "bold red",
    "locked": "dark_orange",
    "blocked": "magenta",
    "not-started": "magenta",
    "drifted": "yellow",
    "pending": "cyan",
    "drifted+pending": "yellow",
    "running": "blue",
    "skipped": "bright_black",
}

#: Database URL schemes the ledger and a registry database accept -> the SQLAlchemy
#: scheme (PostgreSQL always through psycopg 3).
DATABASE_SCHEMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


#: Pulumi state backends the runner accepts (scheme -> what follows it).
BACKEND_SCHEMES = {
    "file": "file://PATH",
    "s3": "s3://BUCKET",
    "gs": "gs://BUCKET",
    "azblob": "azblob://CONTAINER",
    "postgres": "postgres://USER@HOST/DB",
    "postgresql": "postgresql://USER@HOST/DB",
    "https": "https://API (Pulumi Cloud)",
}


def now() -> datetime:
    """The current time, timezone-aware UTC (the only clock the runner records)."""
    return datetime.now(UTC)


def utc(value: datetime | None) -> datetime | None:
    """``value`` in UTC; a naive datetime is taken as UTC; None stays None."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso(value: datetime | None, timespec: str = "milliseconds") -> str | None:
    """ISO-8601 text in UTC (naive datetimes are taken as UTC); None stays None."""
    value = utc(value)
    return None if value is None else value.isoformat(timespec=timespec)
