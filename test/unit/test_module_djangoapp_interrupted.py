"""
A release stopped before its end, with real releases of the tiny project: stopped
by a signal, it puts back what was live itself; killed, the next run takes the
lock over and puts right what it left (its lock file says where it was).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

# A command that says it started, then waits to be stopped.
WAIT = (
    "import pathlib, sys, time; pathlib.Path(sys.argv[1]).write_text('up'); "
    "time.sleep(60)"
)


@pytest.fixture
def base(tmp_path):
    return tmp_path / "srv"


def _ledger(base):
    path = pathlib.Path(base) / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _signal_when(path, signum):
    """Send ``signum`` to this process once ``path`` exists."""

    def wait_and_send():
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=wait_and_send, daemon=True)
    thread.start()
    return thread


def test_a_release_stopped_by_sigterm_puts_back_what_was_live(mods, tiny_app, base):
    tiny_app("tiny", base)
    assert mods["djangoapp.release"]("v1.0.0", app="tiny")["result"] is True
    live = os.readlink(base / "current")
    started = base / "hook-started"
    tiny_app(
        "tiny",
        base,
        hooks={"after_build": [[sys.executable, "-c", WAIT, str(started)]]},
    )
    handler_before = signal.getsignal(signal.SIGTERM)
    sender = _signal_when(started, signal.SIGTERM)
    # a child this process had before the release (as a minion or a test run has
    # its own): not the release's to end
    bystander = subprocess.Popen(["sleep", "60"])

    try:
        ret = mods["djangoapp.release"]("v1.1.0", app="tiny")
        sender.join()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()

    assert ret["result"] is False
    assert ret["failed_step"] == "after_build"
    assert ret["error"] == "stopped by SIGTERM during after_build"
    assert ret["restored"][0] == f"current unchanged ({os.path.basename(live)})"
    assert ret["restored"][1].startswith("removed the failed release v1.1.0-")
    assert os.readlink(base / "current") == live
    # the releases' shared virtualenvs (.venvs) aside, nothing but the live one
    left = sorted(os.listdir(base / "releases"))
    assert [name for name in left if name != ".venvs"] == [os.path.basename(live)]
    # the hook it started was ended with it, and the lock is free for the next run
    hook = [
        line.split()[0]
        for line in subprocess.run(
            ["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if str(started) in line
    ]
    assert hook == []
    assert (base / ".release.lock").read_text() == ""
    assert _ledger(base)[-1]["status"] == "failed"
    assert _ledger(base)[-1]["failed_step"] == "after_build"
    assert signal.getsignal(signal.SIGTERM) is handler_before


def test_the_next_release_puts_right_what_a_killed_one_left(mods, tiny_app, base):
    tiny_app("tiny", base)
    assert mods["djangoapp.release"]("v1.0.0", app="tiny")["result"] is True
    live = os.path.basename(os.readlink(base / "current"))
    # a release killed in its build: its half-built release, a dump it did not
    # finish, a command of its own still running, its lock file saying where
    half_built = base / "releases" / "v1.1.0-0badc0de"
    (half_built / "src").mkdir(parents=True)
    backups = base / "backups"
    backups.mkdir(exist_ok=True)
    (backups / "v1.1.0-0badc0de.dump.partial").write_bytes(b"PGDMP")
    orphan = subprocess.Popen(["sleep", "60"], cwd=half_built / "src")
    stopped = {
        "action": "release",
        "pid": 999999,
        "version": "v1.1.0",
        "user": "deployer",
        "jid": "20261205080000000000",
        "started": "2026-12-05T08:00:00+00:00",
        "step": "build",
        "rid": "v1.1.0-0badc0de",
        "previous": live,
    }
    (base / ".release.lock").write_text(json.dumps(stopped))

    try:
        ret = mods["djangoapp.release"]("v1.2.0", app="tiny")
    finally:
        orphan.kill()
    orphan.wait()

    assert ret["result"] is True, ret
    assert ret["recovered"] == {
        "action": "release",
        "version": "v1.1.0",
        "step": "build",
        "pid": 999999,
        "user": "deployer",
        "jid": "20261205080000000000",
        "started": "2026-12-05T08:00:00+00:00",
        "put_back": None,
        "done": [
            f"ended the processes it left running: [{orphan.pid}]",
            "removed its release v1.1.0-0badc0de",
            f"removed the unfinished dump {backups / 'v1.1.0-0badc0de.dump.partial'}",
        ],
    }
    assert orphan.returncode == -signal.SIGTERM
    assert ret["notes"][0] == (
        "took over from a release that did not finish (pid 999999, version "
        "v1.1.0, started 2026-12-05T08:00:00+00:00, in step build)"
    )
    interrupted = _ledger(base)[-2]
    assert interrupted["status"] == "interrupted"
    assert interrupted["failed_step"] == "build"
    assert interrupted["id"] == "v1.1.0-0badc0de"
    assert interrupted["recovered"] == ret["recovered"]["done"]
    assert not half_built.exists()
    assert _ledger(base)[-1]["status"] == "success"
    assert _ledger(base)[-1]["version"] == "v1.2.0"


def test_a_release_killed_after_its_switch_is_switched_back(mods, tiny_app, base):
    tiny_app("tiny", base)
    assert mods["djangoapp.release"]("v1.0.0", app="tiny")["result"] is True
    good = os.path.basename(os.readlink(base / "current"))
    killed = mods["djangoapp.release"]("v1.1.0", app="tiny")
    assert killed["result"] is True
    unconfirmed = killed["id"]
    # as if the v1.1.0 run had been killed in its health check: not in the
    # ledger, current on its release
    entries = _ledger(base)[:-1]
    (base / "ledger.jsonl").write_text(
        "".join(json.dumps(entry) + "\n" for entry in entries)
    )
    stopped = {
        "action": "release",
        "pid": 999998,
        "version": "v1.1.0",
        "started": "2026-12-05T08:10:00+00:00",
        "step": "health",
        "rid": unconfirmed,
        "previous": good,
    }
    (base / ".release.lock").write_text(json.dumps(stopped))

    ret = mods["djangoapp.rollback"](app="tiny")

    assert ret["result"] is True, ret
    assert ret["recovered"]["put_back"] == good
    assert ret["recovered"]["done"] == [
        f"current -> releases/{good}",
        "service not running: nothing to reload",
        f"removed its release {unconfirmed}",
    ]
    # the rollback the operator asked for is that undoing: not one further back
    assert ret["changed"] is False
    assert ret["comment"] == f"{good} is live again: the stopped run was undone"
    assert os.path.basename(os.readlink(base / "current")) == good
    assert _holder_free(base)


def _holder_free(base):
    return (pathlib.Path(base) / ".release.lock").read_text() == ""


def test_each_step_is_written_into_the_lock_file_while_it_runs(mods, tiny_app, base):
    seen = base / "seen.json"
    copy = (
        "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2]); "
        "open(sys.argv[3], 'w').write('up')"
    )
    tiny_app(
        "tiny",
        base,
        hooks={
            "after_build": [
                [
                    sys.executable,
                    "-c",
                    copy,
                    str(base / ".release.lock"),
                    str(seen),
                    str(base / "copied"),
                ]
            ]
        },
    )
    ret = mods["djangoapp.release"]("v1.0.0", app="tiny")
    assert ret["result"] is True, ret
    holder = json.loads(seen.read_text())
    assert holder["action"] == "release"
    assert holder["step"] == "after_build"
    assert holder["rid"] == ret["id"]
    assert holder["previous"] is None
    assert holder["pid"] == os.getpid()
    assert _holder_free(base)


def test_a_release_killed_after_recording_its_success_stays_live(mods, tiny_app, base):
    tiny_app("tiny", base)
    assert mods["djangoapp.release"]("v1.0.0", app="tiny")["result"] is True
    first = os.path.basename(os.readlink(base / "current"))
    done = mods["djangoapp.release"]("v1.1.0", app="tiny")
    assert done["result"] is True
    # as if killed in its prune: the ledger says it succeeded
    success = _ledger(base)[-1]
    stopped = {
        "action": "release",
        "pid": 999997,
        "version": "v1.1.0",
        "started": success["started"],
        "step": "prune",
        "rid": done["id"],
        "previous": first,
    }
    (base / ".release.lock").write_text(json.dumps(stopped))

    ret = mods["djangoapp.release"]("v1.1.0", app="tiny")

    assert ret["result"] is True, ret
    assert ret["changed"] is False
    assert ret["recovered"]["put_back"] is None
    assert ret["recovered"]["done"] == ["nothing was left to put right"]
    assert os.path.basename(os.readlink(base / "current")) == done["id"]
    assert (base / "releases" / done["id"]).is_dir()
    assert _ledger(base)[-1]["status"] == "interrupted"
    assert _ledger(base)[-1]["failed_step"] == "prune"
