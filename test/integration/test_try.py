"""test/try as a user runs it, each command a subprocess: up (progress throughout, the
commands to paste), ``salt djangoapp.status``, the printed commands pasted, ``apply``
of another pillar, and ``down --purge``, after which nothing of its host is left.

try runs in a slot of its own ($DJANGOAPP_TRY_SLOT, else the shared host's plus 62)
with a cache directory of its own ($DJANGOAPP_TRY_CACHE), which holds a hard link to
the suite's cached root: the purge removes that link and never the suite's caches.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from secondhost import bootable_testhost, slot_from

import testhost

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TRY = REPO / "test" / "try"
SLOT = slot_from("DJANGOAPP_TRY_SLOT", 62)
# test/try's own files for this slot (WORK_DIR in test/try.py).
TRY_WORK_DIR = Path(f"/var/lib/djangoapp-try{SLOT}")
TRY_DEBIAN = "13"
UP_TIMEOUT = 1800
COMMAND_TIMEOUT = 600
# test/try says something at least every 20 s while a step runs.
LONGEST_SILENCE = 45
ENVIRONMENT_OF_TRY = (testhost.SLOT_VARIABLE, "DJANGOAPP_TRY_CACHE")


@pytest.fixture(scope="module")
def slot_testhost():
    """testhost.py with the globals of try's slot: its names, files and network."""
    return bootable_testhost(SLOT)


@pytest.fixture(scope="module")
def shared_root() -> Path:
    """The suite's cached root for try's Debian, built there when missing, so that
    the rest of the suite finds it too."""
    return testhost.ensure_root_tarball({}, testhost.DISTRIBUTIONS[TRY_DEBIAN])


@pytest.fixture(scope="module")
def try_cache(shared_root) -> Path:
    cache = testhost.CACHE_DIR.parent / f"djangoapp-try-test{SLOT}"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    try:
        os.link(shared_root, cache / shared_root.name)
    except OSError:
        shutil.copy2(shared_root, cache / shared_root.name)
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="module")
def try_environment(try_cache) -> dict[str, str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DJANGOAPP_TRY_COMMAND", "DJANGOAPP_TEST_DEBIAN")
    }
    environment[testhost.SLOT_VARIABLE] = str(SLOT)
    environment["DJANGOAPP_TRY_CACHE"] = str(try_cache)
    return environment


def run_try(environment, *args: str, timeout: float = COMMAND_TIMEOUT):
    return subprocess.run(
        [str(TRY), *args],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_pasted(command: str, timeout: float = COMMAND_TIMEOUT):
    """A printed command line as a user pastes it: in a shell, from another
    directory, with none of the settings try ran with (the line carries them)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ENVIRONMENT_OF_TRY
    }
    return subprocess.run(
        ["bash", "-c", command],
        env=environment,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def status_of(environment) -> dict:
    result = run_try(environment, "salt", "djangoapp.status", "demo", "--out=json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)["local"]


class TriedHost:
    """What ``test/try`` (up) said and left running."""

    def __init__(self, lines: list[tuple[float, str]], returncode: int, state, pid1):
        self.lines = lines
        self.output = "\n".join(line for _, line in lines)
        self.returncode = returncode
        self.state = state
        self.pid1 = pid1

    def printed_commands(self) -> dict[str, str]:
        """The commands printed after ``Work on it``, by what their comment says."""
        listing = self.output.split("Work on it", 1)[1].splitlines()[1:]
        commands = {}
        for comment, command in zip(listing[::2], listing[1::2], strict=False):
            assert comment.strip().startswith("# "), listing
            commands[comment.strip()[2:]] = command.strip()
        return commands


@pytest.fixture(scope="module")
def tried_host(slot_testhost, try_environment):
    """``test/try`` run to its end, every line of its output with the time it came;
    at the end ``down --purge`` when a test left the host up."""
    started = time.monotonic()
    process = subprocess.Popen(
        [str(TRY)],
        env=try_environment,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
        returncode = process.wait(timeout=UP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    state = slot_testhost.HostState.load()
    pid1 = None
    if state is not None and state.nspawn is not None and state.nspawn.alive():
        pid1 = slot_testhost.ProcessRef.of(slot_testhost.TestHost.attach().pid1)
    yield TriedHost(lines, returncode, state, pid1)
    if slot_testhost.STATE_FILE.exists() or TRY_WORK_DIR.exists():
        run_try(try_environment, "down", "--purge")


def test_an_unknown_command_prints_the_usage_and_exits_2(try_environment):
    result = run_try(try_environment, "upp")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: test/try")
    assert "invalid choice: 'upp'" in result.stderr


def test_up_reports_progress_and_the_commands_to_paste(tried_host):
    assert tried_host.returncode == 0, tried_host.output
    output = tried_host.output
    for phase in ("extract root", "boot", "state.apply djangoapp"):
        assert f"[try] {phase} ..." in output
    assert re.search(r"^\[testhost\] extract root: [0-9.]+ s$", output, re.MULTILINE)
    finished_states = re.findall(r"^\[try\]\s+state\s+\d+: \S+ ", output, re.MULTILINE)
    assert len(finished_states) > 50, output
    assert "Failed:     0" in output
    times = [0.0] + [at for at, _ in tried_host.lines]
    silences = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert max(silences) < LONGEST_SILENCE, output

    commands = tried_host.printed_commands()
    prefix = f"{testhost.SLOT_VARIABLE}={SLOT} DJANGOAPP_TRY_CACHE="
    assert all(command.startswith(prefix) for command in commands.values()), commands
    assert [command.split(f"{TRY} ", 1)[1] for command in commands.values()] == [
        "apply",
        "salt djangoapp.release version=v1.0.1 app=demo",
        "salt djangoapp.rollback demo",
        "salt djangoapp.status demo",
        "salt djangoapp.releases demo",
        "down",
        "down --purge",
    ]


def test_salt_runs_a_function_in_the_host(tried_host, try_environment):
    assert tried_host.returncode == 0, tried_host.output
    status = status_of(try_environment)
    current = status["current"]
    assert re.fullmatch(r"v1\.0\.0-[0-9a-f]{8}", current), status
    assert status["app"] == "demo"
    assert status["version"] == "v1.0.0"
    assert status["deployed_how"] == "release"
    assert status["deployed_by"] == "root"
    assert status["service"]["manager"] == "supervisor"
    assert status["service"]["running"] is True
    assert status["service"]["master_release"] == current
    assert status["workers"]
    assert {(w["release"], w["version"]) for w in status["workers"]} == {
        (current, "v1.0.0")
    }
    assert status["release_running"] is None
    assert status["maintenance"]["on"] is False
    assert status["previous_good"] is None

    refused = run_try(
        try_environment, "salt", "djangoapp.release", "version=nope", "app=demo"
    )
    assert refused.returncode != 0, refused.stdout
    assert "is not a branch, tag or commit" in refused.stdout


def test_the_printed_commands_work_pasted(tried_host, try_environment):
    assert tried_host.returncode == 0, tried_host.output
    commands = tried_host.printed_commands()
    first = status_of(try_environment)["current"]

    released = run_pasted(commands["release another tag by hand"])
    assert released.returncode == 0, released.stdout + released.stderr
    assert status_of(try_environment)["version"] == "v1.0.1"

    rolled_back = run_pasted(commands["back to the previous good release"])
    assert rolled_back.returncode == 0, rolled_back.stdout + rolled_back.stderr
    assert status_of(try_environment)["current"] == first

    for what in ("what is live", "the release history"):
        result = run_pasted(commands[what])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "demo" in result.stdout


def test_apply_sends_the_pillar_it_is_given(tried_host, try_environment, tmp_path):
    assert tried_host.returncode == 0, tried_host.output
    pillar = yaml.safe_load((REPO / "pillar" / "demo.sls").read_text())
    pillar["djangoapp"]["apps"]["demo"]["version"] = "v1.2.0"
    changed = tmp_path / "demo.sls"
    changed.write_text(yaml.safe_dump(pillar))

    applied = run_try(try_environment, "apply", "--pillar", str(changed))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert re.search(r"state\s+\d+: djangoapp\.released demo", applied.stdout)
    assert "Failed:     0" in applied.stdout
    status = status_of(try_environment)
    assert status["version"] == "v1.2.0"
    assert {w["version"] for w in status["workers"]} == {"v1.2.0"}


def test_down_purge_leaves_nothing_behind(
    tried_host, slot_testhost, try_environment, try_cache, shared_root
):
    assert tried_host.returncode == 0, tried_host.output
    state = tried_host.state
    host_dir = slot_testhost.WORK_DIR / slot_testhost.NETNS
    assert state.nspawn.alive() and state.proxy.alive() and tried_host.pid1.alive()

    result = run_try(try_environment, "down", "--purge")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"removed {try_cache / shared_root.name}" in result.stdout

    for process in (state.nspawn, state.proxy, tried_host.pid1):
        assert not process.alive(), process
    mount_points = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]
    assert not [m for m in mount_points if m.startswith(str(host_dir))]
    assert not [m for m in mount_points if slot_testhost.NETNS in m]
    assert not Path(f"/run/netns/{slot_testhost.NETNS}").exists()
    assert not Path(f"/sys/class/net/{slot_testhost.HOST_VETH}").exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    assert slot_testhost.NETNS not in netns.stdout.split()
    assert not slot_testhost.STATE_FILE.exists()
    assert not host_dir.exists()
    assert not TRY_WORK_DIR.exists()
    assert not try_cache.exists()
    # The suite's caches are untouched.
    assert shared_root.is_file()
