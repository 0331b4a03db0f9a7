"""A test host of its own beside the shared one: booted in another slot of
test/testhost.py, converged masterless with ``salt-call --local`` from this
repository shown read-only in the host (the way test/try does it), with a pillar
the test writes. Used by the modules that need a host shaped differently from the
shared one (test_combinations, test_debian13, test_project_shapes).

Each module's slot is an environment variable of its own, by default the shared
host's slot plus an offset, so that modules never share a host.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

import testhost
from nspawn_backend import nspawn_host
from stack import HTTP_PROBE, failed_states

REPO = Path(__file__).resolve().parents[2]
FORMULA_MOUNT = "/srv/formula"
PILLAR_MOUNT = "/srv/pillar"
GIT_MOUNT = "/srv/git"
CONVERGE_TIMEOUT = 1800


def slot_from(variable: str, offset: int) -> int:
    """The slot ``$variable`` names, else the shared host's slot plus ``offset``."""
    value = os.environ.get(variable, "").strip()
    return int(value) if value else testhost.SLOT.number + offset


def load_bootable_testhost(slot: int):
    """testhost.py loaded again with its slot globals set to ``slot``, so that a host
    of that slot runs beside the shared host's (a module per slot)."""
    name = f"testhost_slot{slot}"
    if name in sys.modules:
        return sys.modules[name]
    saved = os.environ.get(testhost.SLOT_VARIABLE)
    os.environ[testhost.SLOT_VARIABLE] = str(slot)
    try:
        spec = importlib.util.spec_from_file_location(name, testhost.__file__)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            os.environ.pop(testhost.SLOT_VARIABLE, None)
        else:
            os.environ[testhost.SLOT_VARIABLE] = saved
    return module


def bootable_testhost(slot: int):
    """The testhost module of ``slot``; the test is skipped when this machine cannot
    boot a host (and fails under CI, where it must)."""
    module = load_bootable_testhost(slot)
    reason = module.missing_prerequisites()
    if reason:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"integration tests cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    return module


class SecondHost:
    """The booted host, its testinfra view, its pillar file, and salt-call in it."""

    def __init__(self, host, pillar: dict, pillar_file: Path):
        self.host = host
        self.pillar = pillar
        self.pillar_file = pillar_file
        self.infra = nspawn_host(host.pid1)
        self.ip = host.ip
        self.first_apply: dict | list = {}
        self.first_apply_output = ""

    def salt_call(self, *args: str, timeout: float = CONVERGE_TIMEOUT):
        return self.host.exec(
            [
                "/opt/salt/bin/salt-call",
                "--local",
                f"--file-root={FORMULA_MOUNT}/salt",
                f"--pillar-root={PILLAR_MOUNT}",
                "--out=json",
                *args,
            ],
            check=False,
            timeout=timeout,
        )

    def salt(self, *args: str, timeout: float = CONVERGE_TIMEOUT):
        """(exit code, the return of the local minion, the whole output)."""
        result = self.salt_call(*args, timeout=timeout)
        try:
            return result.rc, json.loads(result.stdout)["local"], result.stdout
        except (ValueError, KeyError):
            pytest.fail(f"salt-call {' '.join(args)}: {result.stdout}{result.stderr}")

    def apply(self, timeout: float = CONVERGE_TIMEOUT):
        """``state.apply djangoapp`` with the pillar file as it is now."""
        return self.salt(
            "state.apply", "djangoapp", "--retcode-passthrough", timeout=timeout
        )

    @contextlib.contextmanager
    def pillar_for_a_while(self, pillar: dict) -> Iterator[None]:
        """``pillar`` in the host's pillar file for the block, the fixture's after."""
        self.pillar_file.write_text(yaml.safe_dump(pillar))
        try:
            yield
        finally:
            self.pillar_file.write_text(yaml.safe_dump(self.pillar))

    def converged(self) -> SecondHost:
        """This host, once its first apply is known to have failed nowhere: the
        tests that need the stack in place stop here otherwise."""
        failures = failed_states(self.first_apply)
        if failures:
            pytest.fail("state.apply failed:\n" + "\n".join(failures), pytrace=False)
        return self

    def get(self, url: str, host_header: str) -> dict:
        result = self.host.exec(["python3", "-c", HTTP_PROBE, url, host_header])
        return json.loads(result.stdout)


@contextlib.contextmanager
def converged_second_host(
    module,
    work: Path,
    hostname: str,
    pillar: dict,
    debian: str | None = None,
    before_apply: Callable[[object], None] | None = None,
) -> Iterator[SecondHost]:
    """The host of ``module``'s slot, booted with ``work/git`` shown at GIT_MOUNT,
    the repository at FORMULA_MOUNT and ``pillar`` as its whole pillar, after its
    first ``state.apply`` (``first_apply`` holds the return, failed or not).
    ``before_apply(host)`` may prepare the host and change ``pillar`` first."""
    pillar_dir = work / "pillar"
    pillar_dir.mkdir()
    host = module.TestHost(
        hostname=hostname,
        **({"debian": debian} if debian else {}),
        binds_ro={
            work / "git": GIT_MOUNT,
            pillar_dir: PILLAR_MOUNT,
            REPO: FORMULA_MOUNT,
        },
    )
    with host:
        if before_apply:
            before_apply(host)
        pillar_file = pillar_dir / "test.sls"
        pillar_file.write_text(yaml.safe_dump(pillar))
        (pillar_dir / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["test"]}}))
        second = SecondHost(host, pillar, pillar_file)
        # state.apply of a named SLS does not sync the custom modules (a highstate
        # would): the first step on a new minion, as the README says.
        rc, synced, output = second.salt("saltutil.sync_all")
        assert rc == 0 and synced["modules"], output
        _, second.first_apply, second.first_apply_output = second.apply()
        yield second
