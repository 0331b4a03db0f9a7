"""test/testhost.py boots Debian 12 or 13, chosen by $DJANGOAPP_TEST_DEBIAN (or
``up --debian``), each from a root cached by its own recipe."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import testhost


def test_debian_12_by_default_with_salt_from_the_wheelhouse():
    debian = testhost.distribution_from_environment({})
    assert (debian.release, debian.suite, debian.salt_from) == (
        "12",
        "bookworm",
        "wheelhouse",
    )
    assert debian.default_hostname == "djangoapp-test-debian12"


def test_debian_13_builds_salt_in_its_root():
    debian = testhost.distribution_from_environment({"DJANGOAPP_TEST_DEBIAN": "13"})
    assert (debian.release, debian.suite, debian.salt_from) == ("13", "trixie", "index")
    # Python 3.13: timelib has no wheel and builds from source.
    assert {"build-essential", "python3-dev"} <= set(debian.extra_packages)
    recipe = testhost.root_recipe(debian)
    assert recipe["suite"] == "trixie"
    assert {"build-essential", "python3-dev", "systemd"} <= set(recipe["include"])
    assert recipe["salt"] == testhost.SALT_VERSION


def test_each_release_has_its_own_cached_root():
    hashes = {
        testhost.recipe_hash(testhost.root_recipe(debian))
        for debian in testhost.DISTRIBUTIONS.values()
    }
    assert len(hashes) == len(testhost.DISTRIBUTIONS)


def test_an_unknown_release_is_named():
    with pytest.raises(ValueError, match="DJANGOAPP_TEST_DEBIAN='11'"):
        testhost.distribution_from_environment({"DJANGOAPP_TEST_DEBIAN": "11"})


def test_a_host_takes_its_release_and_hostname():
    host = testhost.TestHost(debian="13")
    assert (host.debian.suite, host.hostname) == ("trixie", "djangoapp-test-debian13")
    assert testhost.TestHost(debian="12", hostname="web1").hostname == "web1"
