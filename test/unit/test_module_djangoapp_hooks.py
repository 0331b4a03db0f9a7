"""
The project's own commands at the named points of a release (``hooks`` in
app.json, from the pillar): real releases of the tiny project, in file order.
"""

import os
import pathlib

import pytest

WRITE = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("hooksbase") / "srv"


def hooks(after_build=None, after_migrate=None, after_switch=None):
    points = {
        "after_build": after_build,
        "after_migrate": after_migrate,
        "after_switch": after_switch,
    }
    return {point: commands for point, commands in points.items() if commands}


def _names(ret):
    return [step["name"] for step in ret["steps"]]


def test_hooks_run_at_their_points(mods, tiny_app, base):
    tiny_app(
        "hooked",
        base,
        hooks=hooks(
            after_build=[["python", "-c", WRITE, "built-by-hook.txt", "built"]],
            after_migrate=[["python", "manage.py", "check"]],
            after_switch=[["python", "-c", WRITE, "../../../switched.txt", "on"]],
        ),
    )
    ret = mods["djangoapp.release"]("v1.0.0", app="hooked")
    assert ret["result"] is True, ret
    assert _names(ret) == [
        "lock",
        "fetch",
        "resolve",
        "build",
        "preflight",
        "after_build",
        "migrate",
        "after_migrate",
        "switch",
        "after_switch",
        "prune",
    ]
    after_build = next(s for s in ret["steps"] if s["name"] == "after_build")
    assert [c["argv"][-1] for c in after_build["commands"]] == ["built"]
    written = pathlib.Path(base, "releases", ret["id"], "src", "built-by-hook.txt")
    assert written.read_text() == "built"
    # given back: root's, and nobody else writes into the release
    assert written.stat().st_uid == 0 and not written.stat().st_mode & 0o022
    assert pathlib.Path(base, "switched.txt").read_text() == "on"


def release_failing_at(mods, tiny_app, base, point, argv):
    """v1.1.0 released with one failing command at ``point``."""
    tiny_app("hooked", base, hooks=hooks(**{point: [argv]}))
    return mods["djangoapp.release"]("v1.1.0", app="hooked")


def test_a_failing_hook_after_the_switch_switches_back(mods, tiny_app, base):
    before = os.readlink(base / "current")
    argv = ["python", "-c", "raise SystemExit(3)"]
    ret = release_failing_at(mods, tiny_app, base, "after_switch", argv)
    assert (ret["result"], ret["failed_step"]) == (False, "after_switch")
    assert ret["error"].startswith("python -c raise SystemExit(3) failed (exit 3)")
    assert ret["restored"][0] == f"current -> {before}"
    assert os.readlink(base / "current") == before
    assert not (base / "releases" / ret["id"]).exists()


def test_a_failing_hook_after_the_build_changes_nothing(mods, tiny_app, base):
    before = os.readlink(base / "current")
    argv = ["python", "manage.py", "no-such-command"]
    ret = release_failing_at(mods, tiny_app, base, "after_build", argv)
    assert (ret["result"], ret["failed_step"]) == (False, "after_build")
    assert "switch" not in _names(ret) and "migrate" not in _names(ret)
    assert ret["restored"] == [
        f"current unchanged ({before.split('/')[-1]})",
        f"removed the failed release {ret['id']}",
    ]
    assert os.readlink(base / "current") == before


NICENESS = (
    "import os, pathlib, sys; pathlib.Path(sys.argv[1]).write_text(str(os.nice(0)))"
)


def test_the_release_runs_its_commands_at_its_niceness(mods, tiny_app, base):
    """``release_niceness``: the release's commands (a hook here, as the build and
    the checks) run that much nicer than the minion; the minion's thread is back
    at its own niceness afterwards."""
    minion = os.nice(0)
    tiny_app(
        "hooked",
        base,
        release_niceness=-3,
        hooks=hooks(after_build=[["python", "-c", NICENESS, "niceness.txt"]]),
    )
    ret = mods["djangoapp.release"]("v1.2.0", app="hooked")
    assert ret["result"] is True, ret
    written = pathlib.Path(base, "releases", ret["id"], "src", "niceness.txt")
    assert int(written.read_text()) == max(-20, minion - 3)
    assert os.nice(0) == minion
