"""Hostile input at the edge: uploaded files that would run in the site's origin,
paths and planted links that would reach outside the media root, and a client that
sends its own X-Forwarded-For."""

import json
import uuid

import pytest

pytestmark = pytest.mark.integration

POLICY = (
    "sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; "
    "style-src 'unsafe-inline'"
)
UPLOADS = {
    "page.html": ("<script>document.cookie</script>", "application/octet-stream"),
    "drawing.svg": (
        '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "image/svg+xml",
    ),
    "code.js": ("fetch('/admin/')", "application/octet-stream"),
    "photo.png": ("\x89PNG not really", "image/png"),
}


@pytest.fixture(scope="module")
def server_name(demo_app):
    return demo_app["server_names"][0]


def media_dir(demo_app) -> str:
    return f"/srv/djangoapp/{demo_app['name']}/shared/media"


def as_app(host, demo_app, *argv: str):
    done = host.run("runuser -u %s --" + " %s" * len(argv), demo_app["name"], *argv)
    assert done.rc == 0, done.stderr


@pytest.fixture(scope="module")
def uploads(host, demo_app):
    """Files as the app would store them (owned by its user), a link to a file
    outside the media root and one to a directory, both planted in it."""
    folder = f"{media_dir(demo_app)}/hostile-{uuid.uuid4().hex[:8]}"
    as_app(host, demo_app, "mkdir", folder)
    for name, (content, _) in UPLOADS.items():
        as_app(
            host,
            demo_app,
            "sh",
            "-c",
            'printf %s "$1" > "$2"',
            "sh",
            content,
            f"{folder}/{name}",
        )
    as_app(host, demo_app, "ln", "-s", "/etc/passwd", f"{folder}/passwd.txt")
    as_app(host, demo_app, "ln", "-s", "/etc", f"{folder}/etc")
    yield folder.rsplit("/", 1)[1]
    host.run("rm -rf %s", folder)


@pytest.mark.parametrize("name", sorted(UPLOADS))
def test_uploads_never_run_in_the_sites_origin(
    demo_url, http_get, server_name, uploads, name
):
    content, content_type = UPLOADS[name]
    served = http_get(demo_url(f"/media/{uploads}/{name}"), server_name)
    assert served["status"] == 200
    assert served["body"].endswith(content[-10:])
    assert served["headers"]["Content-Type"] == content_type
    assert served["header_lists"]["content-security-policy"] == [POLICY]
    assert served["header_lists"]["x-content-type-options"] == ["nosniff"]


def test_pages_of_the_app_get_no_upload_policy(demo_url, http_get, server_name):
    page = http_get(demo_url("/"), server_name)
    assert page["status"] == 200
    assert "content-security-policy" not in page["header_lists"]


def test_no_listing_and_no_way_out_of_the_media_root(
    demo_url, http_get, server_name, uploads
):
    listing = http_get(demo_url(f"/media/{uploads}/"), server_name)
    assert listing["status"] == 403
    for path in (
        f"/media/{uploads}/passwd.txt",
        f"/media/{uploads}/etc/passwd",
        "/media/../../../../etc/passwd",
        "/media/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/static/../../../../etc/passwd",
        "/media/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    ):
        answer = http_get(demo_url(path), server_name)
        assert "root:x:0:0" not in answer["body"], path
        assert answer["status"] in (400, 403, 404), (path, answer["status"])


def gunicorn_entry(host, demo_app, probe: str) -> dict:
    log = host.file(f"/var/log/djangoapp/{demo_app['name']}/gunicorn.log")
    lines = [line for line in log.content_string.splitlines() if probe in line]
    assert len(lines) == 1, lines
    return json.loads(lines[0][lines[0].index("{") :])


def nginx_entry(host, demo_app, probe: str) -> dict:
    log = host.file(f"/var/log/nginx/djangoapp-{demo_app['name']}.access.log")
    lines = [line for line in log.content_string.splitlines() if probe in line]
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def test_a_forged_client_address_reaches_neither_the_app_nor_the_log(
    host, demo_app, demo_url, http_get, server_name
):
    probe = uuid.uuid4().hex
    page = http_get(
        demo_url(f"/?probe={probe}"),
        server_name,
        "X-Forwarded-For: 203.0.113.66",
        "X-Real-IP: 203.0.113.67",
    )
    assert page["status"] == 200
    # the app is told the address that connected to Nginx (the probe runs in the
    # host), in both headers, and nothing of what the client claimed
    assert gunicorn_entry(host, demo_app, probe)["remote"] == "127.0.0.1"
    assert nginx_entry(host, demo_app, probe)["remote"] == "127.0.0.1"
