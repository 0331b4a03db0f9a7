"""Fixtures for tests on a real host: a booted Debian 12 test host (test/testhost.py;
Debian 13 with $DJANGOAPP_TEST_DEBIAN=13), a Salt master on this machine, and a
salt-minion in the host connected to it.

``test_host_binds_ro`` and ``salt_pillar_roots`` come from stack.py, with the fixtures
of the converged stack. The fixtures are session-scoped: one host and one master serve
every test of a session.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "test"))

import testhost  # noqa: E402
from stack import *  # noqa: E402, F403  (fixtures of the converged stack)

MINION_CONNECT_TIMEOUT = 180
SALT_CLI_TIMEOUT = 900
TIMINGS = pytest.StashKey[dict]()


def skip_or_fail(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where these tests must run."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"integration tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def salt_minion_id() -> str:
    return testhost.DEFAULT_HOSTNAME


@pytest.fixture(scope="session")
def test_host(request, salt_minion_id, test_host_binds_ro):
    """The booted host (testhost.TestHost); its hostname is the minion id."""
    reason = testhost.missing_prerequisites()
    if reason:
        skip_or_fail(reason)
    host = testhost.TestHost(hostname=salt_minion_id, binds_ro=test_host_binds_ro)
    request.config.stash[TIMINGS] = host.timings
    with host:
        yield host


# The demo's top file (test/states/top.sls), then the formula's state tree, which
# ships no top file: the master of a site serves its own before it.
DEMO_STATES = REPO / "test" / "states"


@pytest.fixture(scope="session")
def salt_file_roots() -> list[str]:
    return [str(DEMO_STATES), str(REPO / "salt")]


@pytest.fixture(scope="session")
def salt_factories_config(test_host):
    """Keep the master's files with the host's, removed with them."""
    return {"root_dir": test_host.work_dir / "salt"}


@pytest.fixture(scope="session")
def salt_master(
    salt_factories, test_host, salt_minion_id, salt_file_roots, salt_pillar_roots
):
    """A master on this machine's end of the veth, the host's minion connected."""
    factory = salt_factories.salt_master_daemon(
        "djangoapp-test-master",
        overrides={
            "interface": test_host.master_ip,
            "auto_accept": True,
            "file_roots": {"base": salt_file_roots},
            "pillar_roots": {"base": salt_pillar_roots},
        },
    )
    with factory.started():
        test_host.adopt(factory.pid)
        started = time.monotonic()
        test_host.start_minion(
            master_port=factory.config["ret_port"],
            publish_port=factory.config["publish_port"],
            minion_id=salt_minion_id,
        )
        wait_for_minion(SaltCli(factory, salt_minion_id), test_host)
        test_host.timings["minion connect"] = round(time.monotonic() - started, 1)
        yield factory


@pytest.fixture(scope="session")
def salt_cli(salt_master, salt_minion_id) -> SaltCli:
    return SaltCli(salt_master, salt_minion_id)


class SaltCli:
    """``salt <minion> <function> args... key=value...`` through the test master.

    Calling it returns the minion's parsed return; ``run`` returns the whole
    ProcessResult (returncode, stdout, stderr, data). Keyword arguments that are not
    strings are passed as JSON, e.g. ``pillar={...}``.
    """

    def __init__(self, master, minion_id: str, timeout: int = SALT_CLI_TIMEOUT):
        self.master = master
        self.minion_id = minion_id
        self.timeout = timeout

    def run(self, function: str, *args, timeout: int | None = None, **kwargs):
        cli = self.master.salt_cli(timeout=timeout or self.timeout)
        return cli.run(function, *args, minion_tgt=self.minion_id, **kwargs)

    def __call__(self, function: str, *args, timeout: int | None = None, **kwargs):
        result = self.run(function, *args, timeout=timeout, **kwargs)
        if result.data is None or str(result.data).startswith("Minion did not return"):
            pytest.fail(f"no return from {self.minion_id} for {function}:\n{result}")
        return result.data


def wait_for_minion(cli: SaltCli, host: testhost.TestHost) -> None:
    deadline = time.monotonic() + MINION_CONNECT_TIMEOUT
    while time.monotonic() < deadline:
        if cli.run("test.ping", timeout=5).data is True:
            return
        time.sleep(1)
    status = host.exec(
        ["systemctl", "status", "--no-pager", "salt-minion"], check=False
    )
    journal = host.exec(
        ["journalctl", "--unit=salt-minion", "--no-pager", "--lines=50"], check=False
    )
    pytest.fail(
        f"minion {cli.minion_id} did not answer test.ping "
        f"in {MINION_CONNECT_TIMEOUT} s\n{status.stdout}\n{journal.stdout}",
        pytrace=False,
    )


def pytest_collection_modifyitems(items):
    """Tests that release other versions on the shared host run last."""
    items.sort(key=lambda item: item.get_closest_marker("release") is not None)


def pytest_terminal_summary(terminalreporter, config):
    timings = config.stash.get(TIMINGS, None)
    if timings:
        terminalreporter.write_sep("-", "test host timings (seconds)")
        for label, seconds in timings.items():
            terminalreporter.write_line(f"{label}: {seconds}")


def pytest_unconfigure(config):
    # Salt flushes its queued log records at interpreter exit, into streams that
    # pytest has closed by then; without this each one prints a "Logging error".
    logging.raiseExceptions = False
