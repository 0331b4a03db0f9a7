"""
``djangoapp.release_apps``: several apps of a host released at once, each in a
process of its own, with real releases of the tiny project (two apps with
their own base directories, locks and ledgers).
"""

import json
import os
import pathlib
import signal
import sys
import threading
import time

import djangoapp_together
import pytest
from salt.exceptions import CommandExecutionError

pytestmark = pytest.mark.timeout(600) if hasattr(pytest.mark, "timeout") else []

# A command that writes its parent's pid (the release's process), then waits.
WAIT = (
    "import os, pathlib, sys, time; "
    "pathlib.Path(sys.argv[1]).write_text(str(os.getppid())); time.sleep(60)"
)


@pytest.fixture
def two(tiny_app, tmp_path):
    """Two tiny apps; returns their base directories by name."""
    bases = {name: tmp_path / name for name in ("tinya", "tinyb")}
    for name, base in bases.items():
        tiny_app(name, base)
    return bases


def _ledger(base):
    path = pathlib.Path(base) / "ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _current(base):
    path = pathlib.Path(base) / "current"
    return os.path.basename(os.readlink(path)) if path.is_symlink() else None


def _when_all_exist(paths, then):
    """Call ``then`` (with the files' texts) once every one of ``paths`` exists."""

    def wait():
        deadline = time.monotonic() + 120
        while not all(p.exists() and p.read_text() for p in paths):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        then([p.read_text() for p in paths])

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def test_two_apps_are_released_at_once_each_in_its_own_process(mods, two, tiny_repo):
    ret = mods["djangoapp.release_apps"]("tinya,tinyb", "v1.0.0")
    assert ret["result"] is True, ret
    assert ret["failed"] == [] and ret["changed"] is True
    assert list(ret["apps"]) == ["tinya", "tinyb"]
    sha = tiny_repo.tags["v1.0.0"]
    for name, base in two.items():
        app = ret["apps"][name]
        assert app["result"] is True and app["app"] == name
        assert app["id"] == f"v1.0.0-{sha[:8]}"
        assert _current(base) == app["id"]
        (entry,) = _ledger(base)
        assert entry["status"] == "success" and entry["id"] == app["id"]
    # each ran in a process of its own: the runs overlapped in time
    started = {name: _ledger(base)[0]["started"] for name, base in two.items()}
    finished = {name: _ledger(base)[0]["finished"] for name, base in two.items()}
    assert started["tinya"] < finished["tinyb"] and started["tinyb"] < finished["tinya"]


def test_a_mapping_gives_each_app_its_version_and_one_failing_leaves_the_other(
    mods, loaders, two
):
    assert mods["djangoapp.release_apps"](["tinya", "tinyb"])["result"] is True
    live_b = _current(two["tinyb"])
    loaders["context"].pop("retcode", None)
    ret = mods["djangoapp.release_apps"]({"tinya": "v1.1.0", "tinyb": "v9.9.9"})
    assert ret["result"] is False
    assert ret["failed"] == ["tinyb"]
    assert ret["apps"]["tinya"]["result"] is True
    assert ret["apps"]["tinya"]["version"] == "v1.1.0"
    assert ret["apps"]["tinyb"]["failed_step"] == "resolve"
    assert _current(two["tinya"]) == ret["apps"]["tinya"]["id"]
    assert _current(two["tinyb"]) == live_b
    assert loaders["context"].get("retcode") == 1


@pytest.mark.parametrize(
    ("apps", "version", "error"),
    [
        (None, None, "apps is required: app names, or a mapping of app to version"),
        ("tinya,tinya", None, "apps: named more than once: tinya"),
        ("tinya,Bad-Name", None, "apps 'Bad-Name' is not a valid app name"),
        ({"tinya": "v1.1.0"}, "v1.1.0", "version: give it for every app"),
        ({"tinya": "v1.1.0", "tinyb": "-x"}, None, "apps: tinyb: version '-x'"),
        ("tinya", "--upload-pack=x", "version '--upload-pack=x'"),
    ],
)
def test_bad_input_is_refused_before_any_release(mods, two, apps, version, error):
    ret = mods["djangoapp.release_apps"](apps, version)
    assert ret["result"] is False
    assert ret["error"].startswith(error), ret["error"]
    assert ret.keys() == {"result", "error"}
    assert [_current(base) for base in two.values()] == [None, None]


def test_an_app_not_on_this_host_is_refused_before_any_release(mods, two):
    with pytest.raises(CommandExecutionError, match="app 'nope' is not configured"):
        mods["djangoapp.release_apps"]("tinya,nope", "v1.0.0")
    assert _current(two["tinya"]) is None


def test_test_mode_says_what_each_would_do_and_changes_nothing(mods, two):
    ret = mods["djangoapp.release_apps"]("tinya,tinyb", "v1.0.0", test=True)
    assert ret["result"] is True and ret["changed"] is True
    for name, base in two.items():
        assert ret["apps"][name]["comment"].startswith("would release v1.0.0-")
        assert not (base / "releases").exists() or not _current(base)


def test_a_stopping_signal_is_passed_on_and_each_release_puts_back(mods, tiny_app, two):
    assert mods["djangoapp.release_apps"]("tinya,tinyb", "v1.0.0")["result"] is True
    live = {name: _current(base) for name, base in two.items()}
    started = {name: base / "hook-started" for name, base in two.items()}
    for name, base in two.items():
        tiny_app(
            name,
            base,
            hooks={"after_build": [[sys.executable, "-c", WAIT, str(started[name])]]},
        )
    handler_before = signal.getsignal(signal.SIGTERM)
    sender = _when_all_exist(
        list(started.values()), lambda _pids: os.kill(os.getpid(), signal.SIGTERM)
    )
    ret = mods["djangoapp.release_apps"]("tinya,tinyb", "v1.1.0")
    sender.join()
    assert ret["result"] is False
    assert ret["failed"] == ["tinya", "tinyb"]
    for name, base in two.items():
        app = ret["apps"][name]
        assert app["failed_step"] == "after_build"
        assert app["error"] == "stopped by SIGTERM during after_build"
        assert _current(base) == live[name]
        assert _ledger(base)[-1]["status"] == "failed"
        assert (base / ".release.lock").read_text() == ""
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_a_release_process_killed_is_reported_and_the_other_goes_on(
    mods, tiny_app, two
):
    started = two["tinya"] / "hook-started"
    tiny_app(
        "tinya",
        two["tinya"],
        hooks={"after_build": [[sys.executable, "-c", WAIT, str(started)]]},
    )
    killer = _when_all_exist(
        [started], lambda pids: os.kill(int(pids[0]), signal.SIGKILL)
    )
    ret = mods["djangoapp.release_apps"]("tinya,tinyb", "v1.0.0")
    killer.join()
    assert ret["failed"] == ["tinya"]
    assert ret["apps"]["tinya"] == {
        "result": False,
        "error": "the run's process was killed by SIGKILL before it answered",
    }
    assert ret["apps"]["tinyb"]["result"] is True
    assert _current(two["tinyb"]) == ret["apps"]["tinyb"]["id"]
    # the kernel freed its lock: the next release of it puts right what was left
    tiny_app("tinya", two["tinya"])
    again = mods["djangoapp.release"]("v1.0.0", app="tinya")
    assert again["result"] is True, again
    assert _ledger(two["tinya"])[0]["status"] == "interrupted"


def test_a_child_ends_once_the_threads_its_run_left_are_done(tmp_path):
    """The release's events go out in threads of their own: a child waits for them
    as an interpreter does at exit (it ends by os._exit, which does not)."""
    sent = tmp_path / "sent"

    def job():
        def send_later():
            time.sleep(0.5)
            sent.write_text("sent")

        threading.Thread(target=send_later).start()
        return {"result": True}

    assert djangoapp_together.run_together({"one": job}) == {"one": {"result": True}}
    assert sent.read_text() == "sent"
