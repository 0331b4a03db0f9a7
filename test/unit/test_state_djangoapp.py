"""
Unit tests of the ``djangoapp.released`` state, with real releases of the
tiny Django project (see conftest.py). The tests run in file order.
"""

import os

import pytest


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("statebase") / "srv"


@pytest.fixture
def app(tiny_app, base):
    return tiny_app("stateapp", base)


def _set_test(minion_opts, loaders, value):
    # Salt's loader writes "test" back into each loader's own opts after every
    # call, so it must be set on each of them, not only on the parent.
    for opts in (minion_opts, loaders["states"].opts, loaders["salt"].opts):
        opts["test"] = value


@pytest.fixture
def test_mode(minion_opts, loaders):
    _set_test(minion_opts, loaders, True)
    yield
    _set_test(minion_opts, loaders, False)


def test_released_test_mode_before_first_release(states, app, base, test_mode):
    ret = states["djangoapp.released"]("stateapp", version="v1.0.0")
    assert ret["result"] is None
    assert ret["changes"]["release"]["old"] is None
    assert ret["changes"]["release"]["new"].startswith("v1.0.0-")
    assert "would release" in ret["comment"]
    assert not (base / "current").exists()


def test_released_makes_the_release(states, app, base):
    ret = states["djangoapp.released"]("stateapp", version="v1.0.0")
    assert ret["result"] is True, ret["comment"]
    change = ret["changes"]["release"]
    assert change["old"] is None and change["new"].startswith("v1.0.0-")
    assert ret["changes"]["migrations_ran"] is True
    assert "Released v1.0.0-" in ret["comment"]
    assert os.readlink(base / "current") == f"releases/{change['new']}"


def test_released_again_has_no_changes(states, app):
    ret = states["djangoapp.released"]("stateapp", version="v1.0.0")
    assert ret["result"] is True
    assert ret["changes"] == {}
    assert "already the current release" in ret["comment"]


def test_released_version_defaults_to_app_json(states, app):
    ret = states["djangoapp.released"]("stateapp")
    assert ret["result"] is True and ret["changes"] == {}


def test_released_test_mode_with_a_new_version(states, app, base, test_mode):
    current = os.readlink(base / "current")
    ret = states["djangoapp.released"]("stateapp", version="v1.1.0")
    assert ret["result"] is None
    assert ret["changes"]["release"]["new"].startswith("v1.1.0-")
    assert os.readlink(base / "current") == current


def test_released_test_mode_unknown_ref(states, app, test_mode):
    ret = states["djangoapp.released"]("stateapp", version="no-such-tag")
    assert ret["result"] is False
    assert "not a branch, tag or commit" in ret["comment"]


def test_released_failure_carries_the_module_error(states, app, base):
    current = os.readlink(base / "current")
    ret = states["djangoapp.released"]("stateapp", version="missing-migration")
    assert ret["result"] is False
    assert ret["changes"] == {}
    assert "failed at preflight" in ret["comment"]
    assert "Restored: current unchanged" in ret["comment"]
    assert os.readlink(base / "current") == current


def test_released_bad_version_is_refused(states, app):
    ret = states["djangoapp.released"]("stateapp", version="v1;reboot")
    assert ret["result"] is False
    assert ret["comment"].startswith("version ")


def test_released_bad_app(states, app):
    ret = states["djangoapp.released"]("Bad-App", version="v1.0.0")
    assert ret["result"] is False
    assert ret["comment"].startswith("app ")


def test_released_new_version(states, app, base):
    ret = states["djangoapp.released"]("stateapp", version="v1.1.0")
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["release"]["old"].startswith("v1.0.0-")
    assert ret["changes"]["release"]["new"].startswith("v1.1.0-")
    assert ret["changes"]["migrations_ran"] is False
