"""Health checks after a target's `up`.

The program declares them per platform as the stack output ``health_checks``
(a list of plain dicts), so the runner runs them without importing the
components: ``file_contains`` (a file exists and contains a text),
``sqlite_query`` (a query's first value equals ``expect``) and ``http`` (a URL
answers ``expect_status``, with timeouts and retries).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential


def _file_contains(check: Mapping[str, Any]) -> str | None:
    path = Path(check["path"])
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    return None if str(check["text"]) in text else f"{path} does not contain {check['text']!r}"


def _sqlite_query(check: Mapping[str, Any]) -> str | None:
    path = Path(check["path"])
    if not path.is_file():
        return f"database {path} is missing"
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(check["query"]).fetchone()
    except sqlite3.Error as exc:
        return f"query failed: {exc}"
    value = None if row is None else str(row[0])
    return None if value == str(check["expect"]) else f"expected {check['expect']!r}, got {value!r}"


def _http(check: Mapping[str, Any]) -> str | None:
    import httpx

    expect = int(check.get("expect_status", 200))

    def attempt() -> str | None:
        try:
            response = httpx.get(check["url"], timeout=float(check.get("timeout", 10)), follow_redirects=True)
        except httpx.HTTPError as exc:
            return f"{check['url']}: {exc.__class__.__name__}"
        if response.status_code != expect:
            return f"{check['url']}: status {response.status_code}, expected {expect}"
        if check.get("text") and str(check["text"]) not in response.text:
            return f"{check['url']}: the page does not contain {check['text']!r}"
        return None

    retrying = Retrying(
        retry=retry_if_result(bool),
        stop=stop_after_attempt(int(check.get("attempts", 3))),
        wait=wait_exponential(multiplier=0.5, max=5),
        retry_error_callback=lambda s: s.outcome.result(),
    )
    return retrying(attempt)


KINDS = {"file_contains": _file_contains, "sqlite_query": _sqlite_query, "http": _http}


def run_checks(checks: Iterable[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Run every check; each result is {name, kind, ok, message}."""
    results = []
    for check in checks or ():
        kind = check.get("kind")
        runner = KINDS.get(kind)
        problem = f"unknown check kind {kind!r}" if runner is None else runner(check)
        results.append({"name": check.get("name", kind), "kind": kind, "ok": problem is None, "message": problem})
    return results


def first_failure(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((r for r in results if not r["ok"]), None)
