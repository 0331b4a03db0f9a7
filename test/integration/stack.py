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
GIT_MOUNT = "/srv/git"
CONVERGE_TIMEOUT = 1800


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


@pytest.fixture(scope="session")
def demo_pillar() -> dict:
    return yaml.safe_load(DEMO_PILLAR.read_text())


@pytest.fixture(scope="session")
def salt_pillar_roots(tmp_path_factory) -> list[str]:
    """The demo pillar, plus the proxy through which the test host reaches out."""
    pillar_dir = tmp_path_factory.mktemp("pillar")
    shutil.copy(DEMO_PILLAR, pillar_dir / "demo.sls")
    (pillar_dir / "test_host.sls").write_text(
        yaml.safe_dump(
            {
                "djangoapp": {
                    "proxy": {"http": testhost.PROXY_URL, "https": testhost.PROXY_URL}
                }
            }
        )
    )
    (pillar_dir / "top.sls").write_text(
        yaml.safe_dump({"base": {"*": ["demo", "test_host"]}})
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


HTTP_PROBE = r"""
import json, ssl, sys, urllib.request, urllib.error
url, host_header = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, headers={"Host": host_header})
context = ssl._create_unverified_context()
try:
    response = urllib.request.urlopen(request, timeout=15, context=context)
    status, headers, body = response.status, dict(response.headers), response.read()
except urllib.error.HTTPError as error:
    status, headers, body = error.code, dict(error.headers), error.read()
print(json.dumps({"status": status, "headers": headers,
                  "body": body.decode("utf-8", "replace")}))
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


@pytest.fixture(scope="session")
def http_get(host):
    """GET a URL from inside the host; returns {"status", "headers", "body"}."""

    def get(url, host_header):
        result = host.run("python3 -c %s %s %s", HTTP_PROBE, url, host_header)
        assert result.rc == 0, result.stderr
        return json.loads(result.stdout)

    return get
