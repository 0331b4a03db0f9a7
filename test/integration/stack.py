"""Fixtures for the converged stack: the demo app's git repository shown in the test
host, the pillar of the test run, one `state.apply` that every read-only test shares,
and the testinfra host that the host checks (testinfra/) run against: our systemd test
host, or the one `--hosts` names (kitchen). Imported by conftest.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import demorepo
import testhost
from nspawn_backend import nspawn_host

REPO = Path(__file__).resolve().parents[2]
DEMO_PILLAR = REPO / "pillar" / "demo.sls"
# The stack of the shared host (Redis, Supervisor, self-signed TLS), merged over the
# demo pillar; kitchen.yml uses it too.
STACK_PILLAR = REPO / "test" / "pillar" / "stack.sls"
GIT_MOUNT = "/srv/git"
CONVERGE_TIMEOUT = 1800

# Errors of the demo app go to a Sentry stand-in in the host (test_error_reporting.py);
# the DSN's key is a secret that never shows (test_converge.py).
SENTRY_PORT = 8765
SENTRY_KEY = "sentry-key-canary-4f2b9e"
SENTRY_DSN = f"http://{SENTRY_KEY}@127.0.0.1:{SENTRY_PORT}/42"

# The monitoring agents of the shared host, asked by this machine's end of the veth
# and nobody else (test_monitoring_agents.py, testinfra/test_monitoring.py). The
# community is a secret that never shows.
SNMP_COMMUNITY = "snmp-community-canary-7d3e1a"
MONITORING_PILLAR = {
    "nrpe": {"enabled": True, "allowed_hosts": [testhost.MASTER_IP]},
    "zabbix": {"enabled": True, "server": testhost.MASTER_IP},
    "snmp": {
        "enabled": True,
        "community": SNMP_COMMUNITY,
        "allowed": [testhost.MASTER_IP],
        "location": "djangoapp test host",
        "contact": "ops@example.com",
    },
}
# The agents' ports (parameters/defaults.yaml), each open to its sources only.
MONITORING_PORTS = {
    part: yaml.safe_load(
        (REPO / "salt" / "djangoapp" / "parameters" / "defaults.yaml").read_text()
    )["djangoapp"]["monitoring"][part]["port"]
    for part in MONITORING_PILLAR
}
# Parameters of the checks (`lookup`): this machine runs other tests beside these, so
# the load check's thresholds are out of their reach; its wiring is what is tested.
MONITORING_LOOKUP = {"load": {"warning": "50,50,50", "critical": "100,100,100"}}

# The host features of host.sls, all on for the shared host: testinfra/
# test_hardening.py checks them, and every other test runs behind them (the firewall
# lets this machine reach port 80; the minion's own connections go out).
HARDENING_PILLAR = {
    "firewall": {"enabled": True, "allow": [22, 80, 443]},
    "ssh": {"harden": True},
    "fail2ban": {"enabled": True},
    "auto_updates": {"enabled": True},
    "backups": {"enabled": True, "keep": 3, "hour": 3},
    "monitoring": {
        "sentry_dsn": SENTRY_DSN,
        "sentry_environment": "integration",
        **MONITORING_PILLAR,
    },
}


@pytest.fixture(scope="session")
def demo_git_dir(tmp_path_factory) -> Path:
    """A directory of this machine holding demo.git, shown at /srv/git in the host."""
    return tmp_path_factory.mktemp("git")


@pytest.fixture(scope="session")
def demo_tags(demo_git_dir) -> dict[str, str]:
    return demorepo.build_repo(demo_git_dir / "demo.git")


@pytest.fixture(scope="session")
def test_host_binds_ro(demo_git_dir, demo_tags) -> dict[str, str]:
    return {str(demo_git_dir): GIT_MOUNT}


def merged(base: dict, layer: dict) -> dict:
    """``layer`` merged over ``base`` the way Salt merges pillar files."""
    result = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


@pytest.fixture(scope="session")
def demo_pillar() -> dict:
    """The pillar of the demo app on the shared host (demo.sls and stack.sls)."""
    return merged(
        yaml.safe_load(DEMO_PILLAR.read_text()),
        yaml.safe_load(STACK_PILLAR.read_text()),
    )


@pytest.fixture(scope="session")
def salt_pillar_roots(tmp_path_factory) -> list[str]:
    """The demo pillar, plus the proxy through which the test host reaches out and
    the host hardening."""
    pillar_dir = tmp_path_factory.mktemp("pillar")
    shutil.copy(DEMO_PILLAR, pillar_dir / "demo.sls")
    shutil.copy(STACK_PILLAR, pillar_dir / "stack.sls")
    (pillar_dir / "test_host.sls").write_text(
        yaml.safe_dump(
            {
                "djangoapp": {
                    "proxy": {"http": testhost.PROXY_URL, "https": testhost.PROXY_URL},
                    "lookup": {"monitoring": MONITORING_LOOKUP},
                    **HARDENING_PILLAR,
                }
            }
        )
    )
    (pillar_dir / "top.sls").write_text(
        yaml.safe_dump({"base": {"*": ["demo", "stack", "test_host"]}})
    )
    return [str(pillar_dir)]


def failed_states(state_return) -> list[str]:
    """Comments of the states that failed, or the render errors of a failed run."""
    if not isinstance(state_return, dict):
        return [str(line) for line in state_return]
    return [
        f"{state_id}: {state.get('comment')}"
        for state_id, state in state_return.items()
        if state.get("result") is not True
    ]


def changed_states(state_return: dict) -> list[str]:
    return [
        state_id for state_id, state in state_return.items() if state.get("changes")
    ]


@pytest.fixture(scope="session")
def first_converge(salt_cli):
    """The return of the first `state.apply` on the fresh host."""
    return salt_cli("state.apply", timeout=CONVERGE_TIMEOUT)


@pytest.fixture(scope="session")
def converged_host(first_converge, test_host):
    """A testinfra host for the test host, after a converge without failure."""
    failures = failed_states(first_converge)
    if failures:
        pytest.fail("state.apply failed:\n" + "\n".join(failures), pytrace=False)
    return nspawn_host(test_host.pid1)


# One GET, never following redirects; for https the Host header is the TLS server
# name too (Nginx refuses a handshake for a name no site has), unverified.
HTTP_PROBE = r"""
import http.client, json, socket, ssl, sys, urllib.parse
url, host_header = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2]
if url.scheme == "https":
    context = ssl._create_unverified_context()
    connection = http.client.HTTPSConnection(
        url.hostname, url.port or 443, timeout=15, context=context)
    connection.sock = context.wrap_socket(
        socket.create_connection((url.hostname, url.port or 443), timeout=15),
        server_hostname=host_header.split(":")[0])
else:
    connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=15)
path = (url.path or "/") + ("?" + url.query if url.query else "")
headers = {"Host": host_header}
for extra in sys.argv[3:]:
    name, _, value = extra.partition(":")
    headers[name.strip()] = value.strip()
connection.request("GET", path, headers=headers)
response = connection.getresponse()
headers, header_lists = {}, {}
for name, value in response.getheaders():
    headers.setdefault(name, value)
    header_lists.setdefault(name.lower(), []).append(value)
print(json.dumps({"status": response.status, "headers": headers,
                  "header_lists": header_lists,
                  "body": response.read().decode("utf-8", "replace")}))
"""


@pytest.fixture(scope="session")
def demo_app(demo_pillar):
    name, app = next(iter(demo_pillar["djangoapp"]["apps"].items()))
    return {"name": name, **app}


@pytest.fixture(scope="session")
def host(request):
    """`--hosts` when given (kitchen), else our own systemd test host."""
    hosts = request.config.getoption("hosts", default=None)
    if hosts:
        import testinfra

        return testinfra.get_host(hosts[0] if isinstance(hosts, list) else hosts)
    return request.getfixturevalue("converged_host")


def uses_tls(app: dict) -> bool:
    """Whether an app's pillar turns HTTPS on (its plain HTTP then only redirects)."""
    return (app.get("tls") or {}).get("mode") not in (None, False, "", "off")


@pytest.fixture(scope="session")
def demo_url(demo_app):
    """``demo_url(path)``: the URL of the demo app's page ``path`` from inside the
    host, https when the demo app has TLS on."""
    scheme = "https" if uses_tls(demo_app) else "http"
    return lambda path="/": f"{scheme}://127.0.0.1{path}"


@pytest.fixture(scope="session")
def http_get(host):
    """GET a URL from inside the host; returns {"status", "headers" (the first value
    of each), "header_lists" (lower-case name: every value), "body"}."""

    def get(url, host_header, *headers):
        """``headers``: more request headers, each ``"Name: value"``."""
        result = host.run(
            "python3 -c %s %s %s" + " %s" * len(headers),
            HTTP_PROBE,
            url,
            host_header,
            *headers,
        )
        assert result.rc == 0, result.stderr
        return json.loads(result.stdout)

    return get
