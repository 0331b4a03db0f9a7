"""Errors of the app reach Sentry, named with the live release and the environment
the pillar gives: from a Gunicorn worker (a request that fails) and from the
`<app>-manage` command. A Sentry stand-in in the host (loopback, the pillar's DSN)
records what the app's Sentry SDK sends."""

import contextlib
import json
import time
import uuid

import pytest

from stack import SENTRY_KEY, SENTRY_PORT

pytestmark = pytest.mark.integration

# Records each request body (envelopes, gzip-decoded) as a JSON line in argv[2].
SENTRY_STAND_IN = r"""
import gzip, http.server, json, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        record = {"path": self.path, "auth": self.headers.get("X-Sentry-Auth", ""),
                  "body": body.decode("utf-8", "replace")}
        with open(sys.argv[2], "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@contextlib.contextmanager
def sentry_stand_in(test_host):
    """Runs the stand-in in the host; yields a function returning the events so far
    (the JSON items of the envelopes that are events), stops it by its pid."""
    unit = f"djangoapp-sentry-stand-in-{uuid.uuid4().hex[:8]}"
    record_file = f"/run/{unit}.jsonl"
    test_host.exec(
        ["systemd-run", f"--unit={unit}", "python3", "-c", SENTRY_STAND_IN]
        + [str(SENTRY_PORT), record_file]
    )
    pid = test_host.exec(
        ["systemctl", "show", "--property=MainPID", "--value", unit]
    ).stdout.strip()

    def requests():
        text = test_host.exec(["cat", record_file], check=False).stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def events():
        found = []
        for request in requests():
            for line in request["body"].splitlines():
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if isinstance(item, dict) and item.get("platform") == "python":
                    found.append({**item, "_request": request})
        return found

    try:
        probe = "import socket; socket.create_connection(('127.0.0.1', %d), 2)"
        deadline = time.monotonic() + 10
        while test_host.exec(["python3", "-c", probe % SENTRY_PORT], check=False).rc:
            assert time.monotonic() < deadline, "the Sentry stand-in did not start"
            time.sleep(0.2)
        yield events
    finally:
        if pid.isdigit() and pid != "0":
            test_host.exec(["kill", pid], check=False)
        test_host.exec(["rm", "-f", record_file], check=False)


def wait_for_event(events, matches, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        found = [event for event in events() if matches(event)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no such event; got {events()}"
        time.sleep(0.5)


@pytest.fixture
def live_version(converged_host, demo_app):
    info = converged_host.file(
        f"/srv/djangoapp/{demo_app['name']}/current/release.json"
    ).content_string
    return json.loads(info)["version"]


def exception_types(event):
    return [value["type"] for value in event.get("exception", {}).get("values", [])]


def test_a_failing_request_is_reported_with_the_release(
    converged_host, test_host, demo_app, demo_url, http_get, live_version
):
    with sentry_stand_in(test_host) as events:
        page = http_get(demo_url("/sentry-debug/"), demo_app["server_names"][0])
        assert page["status"] == 500
        event = wait_for_event(
            events, lambda event: "ZeroDivisionError" in exception_types(event)
        )
    assert event["release"] == live_version
    assert event["environment"] == "integration"
    assert event["_request"]["path"] == "/api/42/envelope/"
    # Sent with the DSN's key, to the DSN's project.
    assert SENTRY_KEY in event["_request"]["auth"] + event["_request"]["body"]
    # DEBUG is off: the client gets no traceback.
    assert "ZeroDivisionError" not in page["body"]


def test_the_manage_command_reports_with_the_release(
    converged_host, test_host, demo_app, live_version
):
    marker = f"manage-command-{uuid.uuid4().hex[:8]}"
    code = (
        "import sentry_sdk; "
        f"sentry_sdk.capture_message({marker!r}); sentry_sdk.flush(10)"
    )
    with sentry_stand_in(test_host) as events:
        result = converged_host.run("%s-manage shell -c %s", demo_app["name"], code)
        assert result.rc == 0, result.stderr
        event = wait_for_event(events, lambda event: marker in json.dumps(event))
    assert event["release"] == live_version
    assert event["environment"] == "integration"
