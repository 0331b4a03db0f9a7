"""HTTPS in front of the demo app (its pillar's tls.mode): TLS 1.2 and 1.3 only, plain
HTTP redirected, security headers sent once, no server version, unknown names
refused, media files from shared/, and Nginx's own X-Forwarded-Proto and body limit.
Probes run inside the host."""

import json
import re
import uuid

import pytest

from stack import uses_tls

pytestmark = pytest.mark.integration

SECURITY_HEADERS = (
    "strict-transport-security",
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
)

# For each TLS version, the version a handshake with only that one agreed on, or the
# error. The client allows old versions and ciphers (security level 0), so that a
# refusal is the server's.
TLS_PROBE = r"""
import json, socket, ssl, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)
server_name, results = sys.argv[1], {}
for label in ("TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3"):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = ssl.TLSVersion[label]
    try:
        with socket.create_connection(("127.0.0.1", 443), timeout=10) as sock:
            with context.wrap_socket(sock, server_hostname=server_name) as tls:
                results[label] = tls.version()
    except (ssl.SSLError, OSError) as error:
        results[label] = f"refused: {error}"
print(json.dumps(results))
"""

# A POST whose Content-Length is over the limit: Nginx answers before the body.
LARGE_POST_PROBE = r"""
import http.client, socket, ssl, sys
server_name, length = sys.argv[1], sys.argv[2]
context = ssl._create_unverified_context()
connection = http.client.HTTPSConnection("127.0.0.1", 443, timeout=15, context=context)
connection.sock = context.wrap_socket(
    socket.create_connection(("127.0.0.1", 443), timeout=15),
    server_hostname=server_name)
connection.putrequest("POST", "/", skip_host=True)
connection.putheader("Host", server_name)
connection.putheader("Content-Length", length)
connection.endheaders()
print(connection.getresponse().status)
"""

SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


@pytest.fixture(scope="module", autouse=True)
def tls_on(demo_app):
    if not uses_tls(demo_app):
        pytest.skip("the demo app's pillar leaves TLS off")


@pytest.fixture(scope="module")
def server_name(demo_app):
    return demo_app["server_names"][0]


def tls_versions(host, server_name):
    probe = host.run("python3 -c %s %s", TLS_PROBE, server_name)
    assert probe.rc == 0, probe.stderr
    return json.loads(probe.stdout)


@pytest.fixture(scope="module")
def media_file(host, demo_app):
    """A file the app might have stored: in shared/media, owned by the app user."""
    name = f"djangoapp-test-{uuid.uuid4().hex[:8]}.txt"
    path = f"/srv/djangoapp/{demo_app['name']}/shared/media/{name}"
    content = f"uploaded {name}\n"
    write = host.run(
        'runuser -u %s -- sh -c \'printf %%s "$1" > "$2"\' sh %s %s',
        demo_app["name"],
        content,
        path,
    )
    assert write.rc == 0, write.stderr
    yield name, content
    host.run("rm -f %s", path)


def test_only_tls_1_2_and_1_3_are_accepted(host, server_name):
    versions = tls_versions(host, server_name)
    assert versions["TLSv1_2"] == "TLSv1.2"
    assert versions["TLSv1_3"] == "TLSv1.3"
    for old in ("TLSv1", "TLSv1_1"):
        assert "ALERT_PROTOCOL_VERSION" in versions[old], versions


def test_unknown_host_name_is_refused_on_443(host):
    versions = tls_versions(host, "unknown.invalid")
    for version in ("TLSv1_2", "TLSv1_3"):
        assert "UNRECOGNIZED_NAME" in versions[version], versions


def test_plain_http_redirects_to_https(http_get, server_name):
    page = http_get("http://127.0.0.1/some/page/?q=1", server_name)
    assert page["status"] == 301
    assert page["headers"]["Location"] == f"https://{server_name}/some/page/?q=1"


def test_security_headers_are_sent_once(demo_url, http_get, server_name, media_file):
    page = http_get(demo_url("/"), server_name)
    stylesheet = re.search(r'href="(/static/[^"]+\.css)"', page["body"]).group(1)
    responses = {
        "page (Django)": page,
        "missing page (Django)": http_get(demo_url("/no/such/page/"), server_name),
        "stylesheet (Nginx)": http_get(demo_url(stylesheet), server_name),
        "missing static file (Nginx)": http_get(
            demo_url("/static/no-such-file.css"), server_name
        ),
        "media file (Nginx)": http_get(
            demo_url(f"/media/{media_file[0]}"), server_name
        ),
    }
    assert responses["missing page (Django)"]["status"] == 404
    assert responses["missing static file (Nginx)"]["status"] == 404
    for what, response in responses.items():
        for header in SECURITY_HEADERS:
            values = response["header_lists"].get(header, [])
            assert len(values) == 1, (what, header, response["header_lists"])
        sent = {name: values[0] for name, values in response["header_lists"].items()}
        assert sent["x-content-type-options"] == "nosniff", what
        assert sent["x-frame-options"] == "DENY", what
        assert re.fullmatch(r"max-age=\d{7,}.*", sent["strict-transport-security"])


def test_server_version_is_hidden(demo_url, http_get, server_name):
    missing = http_get(demo_url("/static/no-such-file.css"), server_name)
    assert missing["headers"]["Server"] == "nginx"
    assert not re.search(r"nginx/\d", missing["body"])


def test_media_is_served_by_nginx_from_shared(
    demo_app, demo_url, host, http_get, server_name, media_file
):
    name, content = media_file
    media = http_get(demo_url(f"/media/{name}"), server_name)
    assert media["status"] == 200
    assert media["body"] == content
    env_file = host.file(f"/etc/djangoapp/{demo_app['name']}/env.json")
    env = json.loads(env_file.content_string)
    assert env["DJANGO_MEDIA_ROOT"] == f"/srv/djangoapp/{demo_app['name']}/shared/media"


def test_nginx_sets_forwarded_proto_and_the_body_limit(demo_app, host, server_name):
    config = host.run("nginx -T")
    assert config.rc == 0, config.stderr
    site = config.stdout.split(f"djangoapp-{demo_app['name']}.conf:", 1)[1]
    # Set from the connection (or a trusted proxy's word: nginx-http.conf's map), a
    # client's own X-Forwarded-Proto never reaches Django.
    assert "proxy_set_header X-Forwarded-Proto $djangoapp_forwarded_proto;" in site
    limit = str(demo_app.get("client_max_body_size", "10m")).lower()
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", limit).groups()
    too_large = int(number) * SIZE_UNITS[unit] + 1
    answer = host.run(
        "python3 -c %s %s %s", LARGE_POST_PROBE, server_name, str(too_large)
    )
    assert answer.rc == 0, answer.stderr
    assert answer.stdout.strip() == "413"
