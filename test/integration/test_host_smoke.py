"""The test host boots, its minion answers the master, and it reaches the outside
only through the proxy."""

import json

import pytest

pytestmark = pytest.mark.integration

PYPI_URL = "https://pypi.org/simple/pip/"

FETCH_THROUGH_PROXY = """
import sys, urllib.request
handler = urllib.request.ProxyHandler({"https": sys.argv[1]})
print(urllib.request.build_opener(handler).open(sys.argv[2], timeout=30).status)
"""

FETCH_DIRECTLY = """
import sys, urllib.request
urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
    sys.argv[1], timeout=10)
"""


def test_minion_answers_ping(salt_cli):
    assert salt_cli("test.ping") is True


def test_host_is_the_debian_release_asked_for(salt_cli, test_host):
    """Debian 12 unless $DJANGOAPP_TEST_DEBIAN says 13."""
    assert salt_cli("grains.get", "os") == "Debian"
    release = int(test_host.debian.release)
    assert salt_cli("grains.get", "osmajorrelease") == release


def test_systemd_runs_the_host(salt_cli):
    state = salt_cli("cmd.run", "systemctl is-system-running")
    assert state in ("running", "degraded")


def test_minion_has_its_own_environment(salt_cli):
    environment = json.loads(
        salt_cli(
            "cmd.run",
            "python3 -c 'import json, os; print(json.dumps(dict(os.environ)))'",
        )
    )
    assert environment["PATH"].split(":")[0] == "/opt/salt/bin"
    assert not any(name.startswith(("PIP_", "SSL_CERT")) for name in environment)


def test_https_through_the_proxy(test_host):
    result = test_host.exec(
        ["python3", "-c", FETCH_THROUGH_PROXY, test_host.proxy_url, PYPI_URL]
    )
    assert result.stdout.strip() == "200"


def test_apt_through_the_proxy(test_host):
    test_host.exec(
        ["apt-get", "-o", f"Acquire::http::Proxy={test_host.proxy_url}", "update"],
        timeout=300,
    )


def test_no_route_without_the_proxy(test_host):
    route = test_host.exec(["ip", "route", "get", "203.0.113.1"], check=False)
    assert route.rc != 0
    assert "unreachable" in route.stderr
    direct = test_host.exec(["python3", "-c", FETCH_DIRECTLY, PYPI_URL], check=False)
    assert direct.rc != 0
    assert "URLError" in direct.stderr


def test_commands_run_as_a_given_user(test_host):
    assert test_host.exec(["id", "-un"], user="nobody").stdout.strip() == "nobody"


def test_files_on_disk_are_the_hosts_files(test_host):
    os_release = test_host.get_file("/etc/os-release")
    assert f"VERSION_CODENAME={test_host.debian.suite}" in os_release
    test_host.put_file("/run/djangoapp-smoke/greeting", "hello\n", mode=0o600)
    shown = test_host.exec(["stat", "-c", "%a %U", "/run/djangoapp-smoke/greeting"])
    assert shown.stdout.split() == ["600", "root"]
    test_host.exec(["sh", "-c", "echo from-inside > /tmp/djangoapp-smoke"])
    assert test_host.get_file("/tmp/djangoapp-smoke") == "from-inside\n"
