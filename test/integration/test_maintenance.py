"""``djangoapp.maintenance`` on the shared host, under load through Nginx from this
machine: while it is on, every page answers 503 with the maintenance page and
Retry-After, static files are served, the health path answers the host's own
checks (so a release made meanwhile passes its health check) and nobody else;
a release and a state.apply leave it on; no request fails at either switch."""

import http.client
import time

import pytest

import testhost
from loadgen import Load, NamedHTTPSConnection
from stack import failed_states, uses_tls

pytestmark = [pytest.mark.integration, pytest.mark.release]

MESSAGE = "Back at 14:00 UTC, with <notes> & more"
TIMEOUT = 900
STATIC_FILE = "/static/notes/site.css"


def from_outside(demo_app, path: str) -> tuple[int, dict, str]:
    """One GET through Nginx from this machine (not from the host itself)."""
    host = demo_app["server_names"][0]
    if uses_tls(demo_app):
        connection = NamedHTTPSConnection(testhost.HOST_IP, 443, host, timeout=15)
    else:
        connection = http.client.HTTPConnection(testhost.HOST_IP, 80, timeout=15)
    connection.request("GET", path, headers={"Host": host})
    response = connection.getresponse()
    body = response.read().decode("utf-8", "replace")
    connection.close()
    return response.status, dict(response.getheaders()), body


def page_kind(body: bytes) -> str:
    if b"<h1>Down for maintenance</h1>" in body:
        return "maintenance"
    if b'<span class="version">' in body:
        return "app"
    return "other"


def load_on(demo_app, path: str, **options) -> Load:
    return Load(
        testhost.HOST_IP,
        443 if uses_tls(demo_app) else 80,
        path,
        host_header=demo_app["server_names"][0],
        clients=8,
        tls=uses_tls(demo_app),
        **options,
    )


def test_maintenance_under_load_survives_a_release_and_an_apply(
    converged_host, salt_cli, http_get, demo_app
):
    scheme = "https" if uses_tls(demo_app) else "http"
    name = demo_app["name"]
    pages = load_on(demo_app, "/", planned=(503,), classify=page_kind)
    files = load_on(demo_app, STATIC_FILE)
    with pages, files:
        time.sleep(1)
        on = salt_cli("djangoapp.maintenance", name, "on", f"message={MESSAGE}")
        assert (on["on"], on["changed"], on["message"]) == (True, True, MESSAGE)

        status, headers, body = from_outside(demo_app, "/")
        assert status == 503
        assert headers["Retry-After"] == str(
            demo_app.get("maintenance_retry_after", 300)
        )
        assert "Back at 14:00 UTC, with &lt;notes&gt; &amp; more" in body
        # the health path: 503 from outside, the app's answer for the host's checks
        assert from_outside(demo_app, demo_app["health_path"])[0] == 503
        local = http_get(
            f"{scheme}://127.0.0.1{demo_app['health_path']}",
            demo_app["server_names"][0],
        )
        assert local["status"] == 200, local
        assert "Retry-After" not in local["headers"]
        assert from_outside(demo_app, STATIC_FILE)[0] == 200

        release = salt_cli.run(
            "djangoapp.release", "version=v1.0.1", f"app={name}", timeout=TIMEOUT
        )
        assert release.returncode == 0, release.data
        assert salt_cli("djangoapp.status", name)["maintenance"]["on"] is True
        back = salt_cli.run("djangoapp.rollback", f"app={name}", timeout=TIMEOUT)
        assert back.returncode == 0, back.data
        applied = salt_cli("state.apply", timeout=TIMEOUT)
        assert not failed_states(applied), failed_states(applied)
        assert from_outside(demo_app, "/")[0] == 503

        off = salt_cli("djangoapp.maintenance", name, "off")
        assert (off["on"], off["changed"]) == (False, True)
        time.sleep(1)
    print(pages.result, files.result, sep="\n")
    assert pages.result.failed == 0, pages.result.failures
    assert files.result.failed == 0, files.result.failures
    labels = pages.result.labels
    assert set(labels) == {"app", "maintenance"}, labels
    # the app before and after, the page in between
    assert labels["app"]["first"] < labels["maintenance"]["first"]
    assert labels["maintenance"]["last"] < labels["app"]["last"]
    status, headers, body = from_outside(demo_app, "/")
    assert status == 200 and '<span class="version">v1.0.0</span>' in body
    assert "Retry-After" not in headers
