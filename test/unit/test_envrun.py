"""The envrun wrapper (salt/djangoapp/files/envrun.py) that the `<app>-manage` command
runs: the command gets the app's environment file, and with --release the version of
the live release as SENTRY_RELEASE, unless the environment file names one itself."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "salt/djangoapp/files/envrun.py"
SHOW = "import json, os; print(json.dumps({k: os.environ.get(k) for k in %r}))"


def run(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def environment_seen(*args, keys=("SENTRY_RELEASE", "DATABASE_URL")):
    proc = run(*args, sys.executable, "-c", SHOW % (keys,))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / "env.json"
    path.write_text(json.dumps({"DATABASE_URL": "postgres://u:secret@localhost/db"}))
    return path


@pytest.fixture
def release_dir(tmp_path):
    path = tmp_path / "releases" / "20261126T120000-v1.0.1-abc123"
    path.mkdir(parents=True)
    (path / "release.json").write_text(json.dumps({"version": "v1.0.1"}))
    return path


def test_the_command_gets_the_environment_file(env_file):
    assert environment_seen(str(env_file)) == {
        "SENTRY_RELEASE": None,
        "DATABASE_URL": "postgres://u:secret@localhost/db",
    }


def test_release_names_the_version_of_the_release(env_file, release_dir):
    seen = environment_seen("--release", str(release_dir), str(env_file))
    assert seen["SENTRY_RELEASE"] == "v1.0.1"
    assert seen["DATABASE_URL"] == "postgres://u:secret@localhost/db"


def test_the_environment_file_may_name_the_release_itself(env_file, release_dir):
    env_file.write_text(json.dumps({"SENTRY_RELEASE": "shop@2.0"}))
    seen = environment_seen("--release", str(release_dir), str(env_file))
    assert seen["SENTRY_RELEASE"] == "shop@2.0"


def test_a_release_without_release_json_sets_nothing(env_file, tmp_path):
    seen = environment_seen("--release", str(tmp_path / "missing"), str(env_file))
    assert seen["SENTRY_RELEASE"] is None


@pytest.mark.parametrize(
    "args", [(), ("only-env.json",), ("--release",), ("--release", "/srv/x", "e")]
)
def test_usage_errors(args):
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: envrun")
