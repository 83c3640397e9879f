"""Notifications: target parsing, exact payloads received by a real HTTP
server on 127.0.0.1, retries, and failures that never raise."""

from __future__ import annotations

import json
import socket
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runner.notify import (
    NotifyError,
    NotifyTarget,
    notify,
    parse_target,
    parse_targets,
    slack_payload,
    webhook_payload,
)
from runner.report import Report, TargetResult

T = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TOKEN = "T000/B000/XXXXsecretXXXX"


def no_wait(_retry_state):
    return 0


class Server:
    """A real HTTP server in a thread: records each request, answers from a script."""

    def __init__(self, statuses=(200,)):
        self.requests: list[dict] = []
        self.statuses = list(statuses)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = server.statuses.pop(0) if len(server.statuses) > 1 else server.statuses[0]
                payload = b"ok" if status < 400 else b"nope"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    def json(self, i=0):
        return json.loads(self.requests[i]["body"])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def make_report() -> Report:
    report = Report(run_id="run-42", command="up", release="2024.05.2", started=T, ended=T)
    add = report.add
    add(TargetResult("acme", "production", "acme.production", "up", "succeeded", started=T, ended=T))
    add(
        TargetResult(
            "globex",
            "production",
            "globex.production",
            "up",
            "failed",
            started=T,
            ended=T,
            error='migration 0007 failed:\n near "INDEXX": syntax error',
            error_resource="urn:pulumi:x::runner::runner:local:Backend$runner:local:Database::globex-db",
            error_component="runner:local:Backend",
        )
    )
    add(
        TargetResult(
            "initech",
            "production",
            "initech.production",
            "up",
            "blocked",
            error="release 2024.05.2 has not succeeded in staging",
        )
    )
    add(
        TargetResult(
            "hooli", "staging", "hooli.staging", "up", "locked", error="still locked by another operation after 300s"
        )
    )
    add(
        TargetResult(
            "evil",
            "staging",
            "evil.staging",
            "up",
            "not-started",
            error="<!channel> <https://evil.example|click> & `rm`",
        )
    )
    add(TargetResult("umbrella", "staging", "umbrella.staging", "up", "skipped"))
    return report


EXPECTED_FAILURES = [
    {
        "tenant": "globex",
        "environment": "production",
        "stack": "globex.production",
        "status": "failed",
        "error": 'Backend (globex-db): migration 0007 failed: near "INDEXX": syntax error',
    },
    {
        "tenant": "initech",
        "environment": "production",
        "stack": "initech.production",
        "status": "blocked",
        "error": "release 2024.05.2 has not succeeded in staging",
    },
    {
        "tenant": "hooli",
        "environment": "staging",
        "stack": "hooli.staging",
        "status": "locked",
        "error": "still locked by another operation after 300s",
    },
    {
        "tenant": "evil",
        "environment": "staging",
        "stack": "evil.staging",
        "status": "not-started",
        "error": "<!channel> <https://evil.example|click> & `rm`",
    },
]


# --------------------------------------------------------------------------
# parse_target


def test_parse_target():
    assert parse_target("slack:https://hooks.slack.com/services/" + TOKEN) == NotifyTarget(
        "slack", "https://hooks.slack.com/services/" + TOKEN
    )
    assert parse_target("webhook:http://127.0.0.1:8080/x?y=1") == NotifyTarget("webhook", "http://127.0.0.1:8080/x?y=1")
    assert parse_target(" WEBHOOK:https://ci.example/hook ").kind == "webhook"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("https://hooks.slack.com/x", "invalid --notify target kind https: expected slack:URL or webhook:URL"),
        ("teams:https://x.example/", "invalid --notify target kind 'teams'"),
        ("slack", "expected slack:URL or webhook:URL"),
        ("slack:", "only http:// and https:// URLs are allowed"),
        ("webhook:ftp://x.example/hook", "only http:// and https:// URLs are allowed, not ftp://"),
        ("webhook:file:///etc/passwd", "only http:// and https:// URLs are allowed, not file://"),
        ("webhook:https:///nohost", "no host"),
        ("webhook:http://x.example:99999/", "invalid --notify webhook URL"),
        ("webhook:http://x.example/a b", "contains whitespace"),
    ],
)
def test_parse_target_errors(spec, message):
    with pytest.raises(NotifyError, match=None) as info:
        parse_target(spec)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_targets_reports_every_error():
    with pytest.raises(NotifyError) as info:
        parse_targets(["teams:https://a.example/", "slack:https://ok.example/", "webhook:ftp://b.example/"])
    assert len(str(info.value).splitlines()) == 2
    assert len(parse_targets(["slack:https://a.example/", "webhook:https://b.example/"])) == 2


def test_urls_are_never_shown():
    target = parse_target("slack:https://user:pw@hooks.slack.com/services/" + TOKEN)
    for text in (repr(target), str(target), target.display):
        assert TOKEN not in text and "pw" not in text
    assert target.display == "slack:https://hooks.slack.com/…"


# --------------------------------------------------------------------------
# payloads


def test_webhook_payload_exact():
    assert webhook_payload(make_report()) == {
        "run_id": "run-42",
        "command": "up",
        "release": "2024.05.2",
        "counts": {"total": 6, "succeeded": 1, "failed": 1, "skipped": 1, "not-started": 1, "locked": 1, "blocked": 1},
        "exit_code": 1,
        "failures": EXPECTED_FAILURES,
    }


def test_payloads_accept_a_report_dict():
    data = make_report().to_dict()
    assert webhook_payload(data)["failures"] == EXPECTED_FAILURES


def test_slack_payload_escapes_untrusted_text():
    payload = slack_payload(make_report())
    text = json.dumps(payload)
    assert "<!channel>" not in text and "<https://evil.example" not in text
    evil = payload["blocks"][-1]["text"]["text"]
    assert evil == ("*evil.staging* `not-started`\n&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; `rm`")


def test_slack_payload_caps_blocks():
    report = Report(run_id="r", command="up")
    for i in range(120):
        report.add(TargetResult(f"t{i:03d}", "staging", f"t{i:03d}.staging", "up", "failed", error="x" * 5000))
    payload = slack_payload(report)
    assert len(payload["blocks"]) <= 50
    assert payload["blocks"][-1]["type"] == "context" and "75 more" in payload["blocks"][-1]["elements"][0]["text"]
    assert all(len(b["text"]["text"]) <= 3000 for b in payload["blocks"] if b["type"] == "section")


def test_slack_payload_all_good():
    report = Report(run_id="r-ok", command="drift")
    report.add(TargetResult("a", "staging", "a.staging", "drift", "in-sync"))
    payload = slack_payload(report)
    assert payload["text"] == ":white_check_mark: runner drift: all targets OK (run r-ok) - 1 targets: 1 in-sync"
    assert len(payload["blocks"]) == 2


# --------------------------------------------------------------------------
# delivery through a real HTTP server


def test_both_payloads_are_delivered():
    report = make_report()
    with Server() as server:
        targets = [
            parse_target(f"slack:{server.url('/services/' + TOKEN)}"),
            parse_target(f"webhook:{server.url('/ci')}"),
        ]
        outcomes = notify(report, targets, wait=no_wait)
    assert [(o.ok, o.status_code, o.attempts, o.error) for o in outcomes] == [(True, 200, 1, None)] * 2
    assert [r["path"] for r in server.requests] == ["/services/" + TOKEN, "/ci"]
    assert all(r["headers"]["Content-Type"] == "application/json" for r in server.requests)

    assert server.json(1) == {
        "run_id": "run-42",
        "command": "up",
        "release": "2024.05.2",
        "counts": {"total": 6, "succeeded": 1, "failed": 1, "skipped": 1, "not-started": 1, "locked": 1, "blocked": 1},
        "exit_code": 1,
        "failures": EXPECTED_FAILURES,
    }
    assert server.json(0) == {
        "text": ":x: runner up: 4 targets need attention (run run-42) - "
        "6 targets: 1 succeeded, 1 failed, 1 skipped, 1 not-started, 1 locked, 1 blocked",
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": ":x: runner up: 4 targets need attention", "emoji": True},
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*Run* `run-42` · *Release* `2024.05.2` · *Exit code* 1\n"
                    "6 targets: 1 succeeded, 1 failed, 1 skipped, 1 not-started, 1 locked, 1 blocked",
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": '*globex.production* `failed`\nBackend (globex-db): migration 0007 failed: near "INDEXX": syntax error',
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*initech.production* `blocked`\nrelease 2024.05.2 has not succeeded in staging",
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*hooli.staging* `locked`\nstill locked by another operation after 300s",
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*evil.staging* `not-started`\n&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; `rm`",
                },
            },
        ],
    }
    assert str(outcomes[0]) == f"notified slack:http://127.0.0.1:{server.port}/… (HTTP 200)"


def test_a_5xx_is_retried():
    with Server(statuses=(500, 200)) as server:
        [outcome] = notify(make_report(), [parse_target(f"webhook:{server.url()}")], wait=no_wait)
    assert (outcome.ok, outcome.status_code, outcome.attempts) == (True, 200, 2)
    assert len(server.requests) == 2
    assert server.json(0) == server.json(1)


def test_a_5xx_three_times_gives_a_failed_outcome():
    with Server(statuses=(503,)) as server:
        [outcome] = notify(make_report(), [parse_target(f"webhook:{server.url()}")], wait=no_wait)
    assert (outcome.ok, outcome.status_code, outcome.attempts, outcome.error) == (False, 503, 3, "HTTP 503")
    assert len(server.requests) == 3


def test_a_4xx_is_not_retried():
    with Server(statuses=(404,)) as server:
        [outcome] = notify(make_report(), [parse_target(f"slack:{server.url('/services/' + TOKEN)}")], wait=no_wait)
    assert (outcome.ok, outcome.status_code, outcome.attempts, outcome.error) == (False, 404, 1, "HTTP 404")
    assert len(server.requests) == 1
    assert TOKEN not in str(outcome) and TOKEN not in json.dumps(outcome.to_dict())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_port_gives_a_failed_outcome_without_raising():
    port = _free_port()
    target = parse_target(f"slack:http://127.0.0.1:{port}/services/{TOKEN}")
    with Server() as server:  # a later target is still notified
        outcomes = notify(make_report(), [target, parse_target(f"webhook:{server.url()}")], wait=no_wait)
    failed, ok = outcomes
    assert not failed.ok and failed.status_code is None and failed.attempts == 3
    assert failed.error.startswith("ConnectError")
    assert TOKEN not in failed.error and TOKEN not in str(failed)
    assert str(failed).startswith(f"notification to slack:http://127.0.0.1:{port}/… failed after 3 attempt(s)")
    assert ok.ok and len(server.requests) == 1


def test_the_default_backoff_gives_up_after_three_attempts():
    port = _free_port()
    [outcome] = notify(make_report(), [parse_target(f"webhook:http://127.0.0.1:{port}/")], timeout=2)
    assert not outcome.ok and outcome.attempts == 3


def test_no_targets_no_requests():
    assert notify(make_report(), []) == []
