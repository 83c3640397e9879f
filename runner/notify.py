"""Notifications at the end of a fleet run: Slack incoming webhooks and plain
JSON webhooks (``--notify slack:URL``, ``--notify webhook:URL``, repeatable).

One message per target per run: the counts, the targets that need attention
(failed, error, blocked, locked, not-started) with their attributed error
line, and the run id.  Delivery uses httpx with up to 3 attempts and a short
backoff, retried only on connection errors and 5xx answers (a 4xx will not
get better, and a timeout after the request was sent may already have
delivered it).

A notification never fails the run: :func:`notify` returns a
:class:`NotifyOutcome` per target and never raises; the caller prints the
failed ones.  Webhook URLs are credentials (a Slack URL *is* the secret), so
they are never printed: targets and outcomes show ``scheme://host/…`` only.
The payloads hold only what the report holds (no config, no secret values).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # httpx and tenacity are imported when a message is sent (~0.1 s a command otherwise)
    import httpx

__all__ = [
    "KINDS",
    "ATTENTION_STATUSES",
    "NotifyError",
    "NotifyTarget",
    "NotifyOutcome",
    "parse_target",
    "parse_targets",
    "failures",
    "webhook_payload",
    "slack_payload",
    "notify",
]

KINDS = ("slack", "webhook")
#: Statuses listed as failures, in this order (then by stack).
ATTENTION_STATUSES = ("failed", "error", "blocked", "locked", "not-started")
ATTEMPTS = 3
#: Slack allows 50 blocks per message: header + summary + failures + "more".
SLACK_MAX_FAILURE_BLOCKS = 45
SLACK_SECTION_LIMIT = 3000
SLACK_HEADER_LIMIT = 150
ERROR_LIMIT = 500


class NotifyError(ValueError):
    """An invalid ``--notify`` specification (a usage error: exit 2)."""


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/…"


@dataclass(frozen=True)
class NotifyTarget:
    kind: str  # "slack" | "webhook"
    url: str

    @property
    def display(self) -> str:
        """``slack:https://hooks.slack.com/…``: safe to print (no path, no token)."""
        return f"{self.kind}:{_redact(self.url)}"

    def __repr__(self) -> str:  # never leak the URL's token through a repr
        return f"NotifyTarget(kind={self.kind!r}, url={_redact(self.url)!r})"

    def __str__(self) -> str:
        return self.display


@dataclass(frozen=True)
class NotifyOutcome:
    target: NotifyTarget
    ok: bool
    status_code: int | None = None
    attempts: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.display,
            "ok": self.ok,
            "status_code": self.status_code,
            "attempts": self.attempts,
            "error": self.error,
        }

    def __str__(self) -> str:
        if self.ok:
            return f"notified {self.target.display} (HTTP {self.status_code})"
        return f"notification to {self.target.display} failed after {self.attempts} attempt(s): {self.error}"


def parse_target(spec: str) -> NotifyTarget:
    """``slack:https://hooks.slack.com/services/...`` or ``webhook:https://...``."""
    if not isinstance(spec, str) or ":" not in spec:
        raise NotifyError(f"invalid --notify {spec!r}: expected slack:URL or webhook:URL")
    kind, url = spec.split(":", 1)
    kind = kind.strip().lower()
    url = url.strip()
    if kind not in KINDS:
        shown = kind if kind in ("http", "https") else repr(kind)
        raise NotifyError(f"invalid --notify target kind {shown}: expected slack:URL or webhook:URL")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise NotifyError(f"invalid --notify {kind} URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise NotifyError(
            f"invalid --notify {kind} URL: only http:// and https:// URLs are allowed"
            + (f", not {parts.scheme}://" if parts.scheme else "")
        )
    if not host:
        raise NotifyError(f"invalid --notify {kind} URL: no host")
    if any(c.isspace() for c in url):
        raise NotifyError(f"invalid --notify {kind} URL: contains whitespace")
    return NotifyTarget(kind, url)


def parse_targets(specs: Iterable[str]) -> list[NotifyTarget]:
    """All specs, every error at once (one NotifyError, one line per spec)."""
    targets, errors = [], []
    for spec in specs:
        try:
            targets.append(parse_target(spec))
        except NotifyError as exc:
            errors.append(str(exc))
    if errors:
        raise NotifyError("\n".join(errors))
    return targets


# --------------------------------------------------------------------------
# payloads


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _error_line(target: Any) -> str | None:
    """The attributed one-line error (TargetResult.error_line, or a report
    dict's ``error``, which already is that line)."""
    line = _get(target, "error_line") or _get(target, "error")
    if not line:
        return None
    line = " ".join(str(line).split())
    return line if len(line) <= ERROR_LIMIT else line[: ERROR_LIMIT - 1] + "…"


def failures(report: Any) -> list[dict[str, Any]]:
    """The targets that need attention, most severe first, then by stack."""
    rank = {s: i for i, s in enumerate(ATTENTION_STATUSES)}
    picked = [t for t in _get(report, "targets", []) or [] if _get(t, "status") in rank]
    picked.sort(key=lambda t: (rank[_get(t, "status")], _get(t, "stack") or ""))
    return [
        {
            "tenant": _get(t, "tenant"),
            "environment": _get(t, "environment"),
            "stack": _get(t, "stack"),
            "status": _get(t, "status"),
            "error": _error_line(t),
        }
        for t in picked
    ]


def webhook_payload(report: Any) -> dict[str, Any]:
    """``{"run_id", "command", "release", "counts", "exit_code", "failures"}``."""
    return {
        "run_id": _get(report, "run_id"),
        "command": _get(report, "command"),
        "release": _get(report, "release"),
        "counts": dict(_get(report, "counts") or {}),
        "exit_code": _get(report, "exit_code"),
        "failures": failures(report),
    }


def _mrkdwn(value: Any) -> str:
    """Slack's three control characters; untrusted text cannot make links/mentions."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(value: Any) -> str:
    return "`" + _mrkdwn(value).replace("`", "'") + "`"


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _counts_line(counts: Mapping[str, Any]) -> str:
    """``40 targets: 37 succeeded, 3 failed``."""
    parts = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "total" and v)
    total = counts.get("total")
    if total is None:
        return parts
    return f"{total} targets" + (f": {parts}" if parts else "")


def slack_payload(report: Any) -> dict[str, Any]:
    """An incoming-webhook message: ``text`` (fallback) and ``blocks``."""
    data = webhook_payload(report)
    fails = data["failures"]
    command = data["command"] or "run"
    ok = not fails and data["exit_code"] in (0, None)
    icon = ":white_check_mark:" if ok else (":warning:" if not fails else ":x:")
    if fails:
        headline = f"runner {command}: {len(fails)} target{'s' if len(fails) != 1 else ''} need attention"
    elif data["exit_code"] == 3:
        headline = f"runner {command}: changes or drift detected"
    else:
        headline = f"runner {command}: all targets OK"
    counts = _counts_line(data["counts"])
    summary = [f"*Run* {_code(data['run_id'])}"]
    if data["release"]:
        summary.append(f"*Release* {_code(data['release'])}")
    summary.append(f"*Exit code* {data['exit_code']}")
    summary_text = " · ".join(summary) + (f"\n{_mrkdwn(counts)}" if counts else "")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _clip(f"{icon} {headline}", SLACK_HEADER_LIMIT), "emoji": True},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(summary_text, SLACK_SECTION_LIMIT)}},
    ]
    for failure in fails[:SLACK_MAX_FAILURE_BLOCKS]:
        text = f"*{_mrkdwn(failure['stack'])}* {_code(failure['status'])}"
        if failure["error"]:
            text += f"\n{_mrkdwn(failure['error'])}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, SLACK_SECTION_LIMIT)}})
    if len(fails) > SLACK_MAX_FAILURE_BLOCKS:
        more = len(fails) - SLACK_MAX_FAILURE_BLOCKS
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"… and {more} more (see the run's report, run {_code(data['run_id'])})"}
                ],
            }
        )
    text = f"{icon} {headline} (run {_mrkdwn(data['run_id'])})"  # no <!channel> from a run id
    if counts:
        text += f" - {counts}"
    return {"text": text, "blocks": blocks}


# --------------------------------------------------------------------------
# delivery


class _ServerError(Exception):
    def __init__(self, response: httpx.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _retryable(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, _ServerError))


def _describe(exc: BaseException, target: NotifyTarget) -> str:
    if isinstance(exc, _ServerError):
        return f"HTTP {exc.response.status_code}"
    message = str(exc) or type(exc).__name__
    message = message.replace(target.url, target.display)
    return f"{type(exc).__name__}: {message}"


def _deliver(client: httpx.Client, target: NotifyTarget, body: bytes, wait: Callable[..., Any]) -> NotifyOutcome:
    from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt

    attempts = 0

    def send() -> httpx.Response:
        nonlocal attempts
        attempts += 1
        response = client.post(target.url, content=body, headers={"Content-Type": "application/json"})
        if response.status_code >= 500:
            raise _ServerError(response)
        return response

    retrying = Retrying(
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait,
        retry=retry_if_exception(_retryable),
        reraise=False,
    )
    try:
        response = retrying(send)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        code = last.response.status_code if isinstance(last, _ServerError) else None
        return NotifyOutcome(target, False, code, attempts, _describe(last, target) if last else "failed")
    except Exception as exc:  # noqa: BLE001 - a notification never fails the run
        return NotifyOutcome(target, False, None, attempts, _describe(exc, target))
    if 200 <= response.status_code < 300:
        return NotifyOutcome(target, True, response.status_code, attempts)
    return NotifyOutcome(target, False, response.status_code, attempts, f"HTTP {response.status_code}")


def notify(
    report: Any,
    targets: Iterable[NotifyTarget],
    *,
    timeout: float = 10,
    wait: Callable[..., Any] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[NotifyOutcome]:
    """Send one message per target; never raises, returns one outcome each.

    ``report`` is a :class:`runner.report.Report` (or anything with
    ``run_id``, ``command``, ``release``, ``counts``, ``exit_code`` and
    ``targets``).  ``wait`` overrides the backoff between attempts (tenacity
    wait); ``transport`` is for embedding (httpx transport).
    """
    targets = list(targets)
    if not targets:
        return []
    import httpx
    from tenacity import wait_exponential

    wait = wait or wait_exponential(multiplier=0.25, min=0.25, max=2)
    outcomes: list[NotifyOutcome] = []
    try:
        webhook_body = json.dumps(webhook_payload(report), default=str).encode()
        slack_body = json.dumps(slack_payload(report), default=str).encode()
    except Exception as exc:  # noqa: BLE001 - never fail the run
        return [NotifyOutcome(t, False, None, 0, f"could not build the message: {exc}") for t in targets]
    try:
        client = httpx.Client(
            timeout=timeout, follow_redirects=False, transport=transport, headers={"User-Agent": "runner-notify"}
        )
    except Exception as exc:  # noqa: BLE001
        return [NotifyOutcome(t, False, None, 0, _describe(exc, t)) for t in targets]
    with client:
        for target in targets:
            body = slack_body if target.kind == "slack" else webhook_body
            try:
                outcomes.append(_deliver(client, target, body, wait))
            except Exception as exc:  # noqa: BLE001 - belt and braces
                outcomes.append(NotifyOutcome(target, False, None, 0, _describe(exc, target)))
    return outcomes
