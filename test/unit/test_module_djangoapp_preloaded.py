"""
``preload_app``: gunicorn-keeper in Gunicorn's place, a master per hand-over.

Releases of the tiny project served by the formula's gunicorn-keeper and its
gunicorn.conf.py (rendered by Salt with ``preload_app: true``) on a socket that
the test binds and hands over as stdin, as supervisord does, while a client
keeps requesting the page through it. The process manager is the stand-in
``supervisorctl`` of the rolling tests, reporting the keeper's pid.

The tests run in file order and share one app.
"""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import sqlite3
import subprocess
import time

import djangoapp_disk
import djangoapp_gunicorn
import djangoapp_host
import djangoapp_procs
import pytest
from standins import Health
from test_module_djangoapp_rolling import (
    WORKERS,
    Client,
    UnixHTTPConnection,
    gunicorn_settings,
    release_while_requested,
    served_app,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
KEEPER = REPO / "salt" / "djangoapp" / "files" / "gunicorn-keeper.py"

# Appended to the formula's config: each worker records whether the app was in
# memory already when it was forked.
FORK_RECORDER = """
import sys

_formula_post_fork = post_fork


def post_fork(server, worker):
    with open(os.path.join(RUN_DIR, f"forked-{worker.pid}.json"), "w") as record:
        json.dump({"app_loaded": "tinysite.wsgi" in sys.modules}, record)
    _formula_post_fork(server, worker)
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("preloaded") / "srv"


@pytest.fixture
def app(tiny_app, base, fake_pm, health_server, monkeypatch, mods):
    monkeypatch.setenv("PATH", f"{fake_pm}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MASTER_PIDFILE", str(base / "manager-main.pid"))
    settings = {**gunicorn_settings(base, "preloaded"), "preload_app": True}
    # three releases on disk: a rollback keeps the one before the last warm
    return served_app(
        tiny_app,
        base,
        settings,
        health_server,
        mods,
        extra=FORK_RECORDER,
        keep_releases=3,
    )


class ProcessManager:
    """Binds the socket and runs the keeper with it as stdin, as supervisord runs
    the formula's fcgi-program."""

    def __init__(self, base):
        self.base = base
        self.socket_path = base / "run" / "gunicorn.sock"
        self.keeper = None

    def start(self):
        installed = self.base / "gunicorn-keeper"
        shutil.copy(KEEPER, installed)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket_path.unlink(missing_ok=True)
        listener.bind(str(self.socket_path))
        listener.listen(64)
        self.inode = self.socket_path.stat().st_ino
        with open(self.base / "gunicorn.log", "ab") as log:
            self.keeper = subprocess.Popen(
                [
                    str(self.base / "current" / "venv" / "bin" / "python"),
                    str(installed),
                    str(self.base / "current"),
                    str(self.base / "run"),
                    "20",
                    "--",
                    "--config",
                    str(self.base / "gunicorn.conf.py"),
                    "tinysite.wsgi:application",
                ],
                cwd=str(self.base),
                env={
                    "PATH": os.environ["PATH"],
                    "HOME": str(self.base),
                    "DJANGOAPP_LISTEN_FD": "0",
                },
                stdin=listener,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        listener.close()
        (self.base / "manager-main.pid").write_text(f"{self.keeper.pid}\n")

    def state(self):
        try:
            return json.loads((self.base / "run" / "keeper.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_for_answer(self, request, timeout=60):
        """keeper.json once the hand-over of ``request`` (a SIGHUP count) ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            last = state.get("last") or {}
            if (
                state.get("pid") == self.keeper.pid
                and last.get("request", -1) >= request
            ):
                return state
            assert self.keeper.poll() is None, self.log()
            time.sleep(0.05)
        raise AssertionError(self.log())

    def log(self):
        return (self.base / "gunicorn.log").read_text()[-3000:]

    def stop(self):
        if self.keeper and self.keeper.poll() is None:
            self.keeper.send_signal(signal.SIGTERM)
            self.keeper.wait(30)


@pytest.fixture(scope="module")
def manager(base):
    manager = ProcessManager(base)
    yield manager
    manager.stop()


def _step(ret, name):
    return next(s for s in ret["steps"] if s["name"] == name)


def _page(path):
    connection = UnixHTTPConnection(str(path))
    try:
        connection.request("GET", "/", headers={"Host": "example.com"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _parent(pid):
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return int(stat.read().rpartition(")")[2].split()[1])


def _gone(pid, timeout=30):
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    return not os.path.exists(f"/proc/{pid}")


def _release_of(master, timeout=30):
    """The release the keeper started a master of (its environment says, once
    the keeper's fork has executed Gunicorn: a busy host may take a while)."""
    prefix = b"DJANGOAPP_RELEASE_DIR="
    deadline = time.monotonic() + timeout
    while True:
        environ = pathlib.Path(f"/proc/{master}/environ").read_bytes().split(b"\0")
        found = [v[len(prefix) :] for v in environ if v.startswith(prefix)]
        if found or time.monotonic() > deadline:
            return found[0].decode() if found else None
        time.sleep(0.05)


def _workers(mods):
    return mods["djangoapp.status"]("preloaded")["workers"]


def test_the_keeper_starts_a_master_that_loaded_the_app_before_forking(
    mods, app, base, manager
):
    ret = mods["djangoapp.release"]("v1.0.0", app="preloaded")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    manager.start()
    state = manager.wait_for_answer(0)
    assert state["last"]["result"] == "ready", state
    live = state["live"]
    assert (state["pid"], state["starting"]) == (manager.keeper.pid, None)
    assert _parent(live) == manager.keeper.pid
    assert (base / "run" / "gunicorn.pid").read_text().strip() == str(live)
    assert json.loads((base / "run" / "gunicorn.json").read_text())["pid"] == live
    workers = _workers(mods)
    assert {(w["release"], w["version"]) for w in workers} == {(ret["id"], "v1.0.0")}
    assert len(workers) == WORKERS
    for worker in workers:
        record = json.loads((base / "run" / f"forked-{worker['pid']}.json").read_text())
        assert record == {"app_loaded": True}
    assert _page(manager.socket_path) == (200, "version 1")


def test_a_release_starts_a_new_master_without_a_failed_request(
    mods, app, base, manager
):
    before = manager.state()["live"]
    ret, client = release_while_requested(
        mods, manager.socket_path, "v1.1.0", "preloaded"
    )
    reload = _step(ret, "reload")
    assert reload["method"] == "preloaded", reload
    assert reload["master"] == manager.state()["live"] != before
    # the master that took over is the standby started beside the release's checks
    assert reload["standby"] is True
    preflight = _step(ret, "preflight")
    assert reload["master"] == preflight["standby"]
    # which ran them, the app imported: no Django set up a second time
    assert preflight["in_standby"] is True
    assert "setup" not in preflight["timings"]
    assert preflight["timings"]["check"] >= 0
    assert preflight["timings"]["collectstatic"] >= 0
    static = base / "releases" / ret["id"] / "src" / "staticfiles"
    assert sorted(p.name for p in static.iterdir()) == sorted(
        p.name for p in (base / "current" / "src" / "staticfiles").iterdir()
    )
    assert (static / "tinyapp").is_dir()
    assert not list((base / "run").glob("preflight-*"))
    # and the release it replaced has a standby now, behind the serving workers
    warm = manager.state()["standby"]
    assert _release_of(warm) == os.path.realpath(
        base / "releases" / ret["previous"]["id"]
    )
    assert os.getpriority(os.PRIO_PROCESS, warm) == 10
    assert _gone(before), "the old master did not stop"
    assert sorted(_step(ret, "verify")["workers"]) == sorted(
        w["pid"] for w in _workers(mods)
    )
    assert client.failures == []
    assert "version 1" in client.answers and client.answers[-1] == "version 2"
    assert {(w["release"], w["version"]) for w in _workers(mods)} == {
        (ret["id"], "v1.1.0")
    }
    # the socket the process manager bound is the one that serves
    assert manager.socket_path.stat().st_ino == manager.inode
    # the boost of the hand-over is over: keeper, master and workers as before
    serving = [manager.keeper.pid, reload["master"], *_step(ret, "verify")["workers"]]
    assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in serving] == [0] * len(
        serving
    )


def test_a_rollback_after_a_release_takes_the_previous_release_s_standby(
    mods, app, base, manager
):
    """Right after the release above: its standby took over and left one of the
    release it replaced."""
    warm = manager.state()["standby"]
    ret = mods["djangoapp.rollback"]("preloaded")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    reload = _step(ret, "reload")
    assert (reload["standby"], reload["master"]) == (True, warm)
    assert _release_of(warm) == os.path.realpath(base / "releases" / ret["id"])
    # nothing is older than v1.0.0 for a next rollback to take, so none is warm
    assert "standby" not in _step(ret, "keep_warm")
    assert manager.state()["standby"] is None
    assert _page(manager.socket_path) == (200, "version 1")
    ret = mods["djangoapp.release"]("v1.1.0", app="preloaded")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    assert _page(manager.socket_path) == (200, "version 2")


def _kept_standby(manager, timeout=10):
    deadline = time.monotonic() + timeout
    while not manager.state().get("standby"):
        assert time.monotonic() < deadline, manager.log()
        time.sleep(0.02)
    return manager.state()["standby"]


def test_a_rollback_keeps_the_release_a_next_rollback_takes_warm(
    mods, app, base, manager
):
    """v1.2.0 released over v1.1.0 over v1.0.0, then two rollbacks: the first
    takes the standby the release kept of v1.1.0 and keeps one of v1.0.0, at the
    serving workers' niceness (10 below, a host the load keeps busy would not
    let it import the app before the next rollback), which the second takes."""
    first = os.readlink(base / "current").split("/")[-1]
    ret = mods["djangoapp.release"]("v1.2.0", app="preloaded")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    ret = mods["djangoapp.rollback"]("preloaded")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    assert (ret["id"], _step(ret, "reload")["standby"]) == (first, True)
    warm = _kept_standby(manager)
    # the engine waits a second for the keeper to name it (busy hosts: 0)
    assert _step(ret, "keep_warm")["standby"] in (warm, 0)
    oldest = [e["id"] for e in mods["djangoapp.releases"]("preloaded")["history"]][0]
    assert _release_of(warm) == os.path.realpath(base / "releases" / oldest)
    assert os.getpriority(os.PRIO_PROCESS, warm) == 0
    assert (
        json.loads((base / "run" / "standby.json").read_text())["keep_previous"]
        is False
    )
    ret = mods["djangoapp.rollback"]("preloaded")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    reload = _step(ret, "reload")
    assert (ret["id"], reload["standby"], reload["master"]) == (oldest, True, warm)
    assert _page(manager.socket_path) == (200, "version 1")
    ret = mods["djangoapp.release"]("v1.1.0", app="preloaded")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    assert _page(manager.socket_path) == (200, "version 2")


def test_a_failed_health_check_hands_back_to_a_master_of_the_previous_release(
    mods, app, base, manager
):
    before = os.readlink(base / "current").split("/")[-1]
    Health.status["code"] = 500
    try:
        with Client(str(manager.socket_path)) as client:
            ret = mods["djangoapp.release"]("v1.2.0", app="preloaded")
            time.sleep(0.5)
    finally:
        Health.status["code"] = 200
    assert (ret["result"], ret["failed_step"]) == (False, "health"), ret["error"]
    assert "handed the workers over to it (preloaded)" in ret["restored"]
    # to the standby of the previous release that the release's standby left
    assert manager.state()["last"]["standby"] is True
    assert manager.state()["standby"] is None
    assert client.failures == []
    assert client.answers[-1] == "version 2"
    assert {(w["release"], w["version"]) for w in _workers(mods)} == {
        (before, "v1.1.0")
    }


def test_a_release_that_fails_its_checks_ends_its_standby(mods, app, manager):
    live = manager.state()["live"]
    ret = mods["djangoapp.release"]("missing-migration", app="preloaded")
    assert (ret["result"], ret["failed_step"]) == (False, "preflight"), ret["error"]
    # found by the standby, which runs the checks
    assert _step(ret, "preflight")["in_standby"] is True
    assert ret["error"].startswith("makemigrations failed: RuntimeError: models have")
    standby = _step(ret, "preflight")["standby"]
    assert standby not in (0, live)
    assert _gone(standby, 10), "the standby master did not stop"
    state = manager.state()
    assert (state["live"], state["standby"]) == (live, None)
    assert _page(manager.socket_path) == (200, "version 2")


def _start_standby(manager, release):
    """What the release engine does: standby.json names the release, SIGUSR1."""
    before = manager.state().get("standby")
    (manager.base / "run" / "standby.json").write_text(
        json.dumps({"release": str(release), "version": "test"})
    )
    manager.keeper.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while manager.state().get("standby") in (None, before):
        assert time.monotonic() < deadline, manager.log()
        time.sleep(0.02)
    return manager.state()["standby"]


def test_a_release_s_standby_imports_ahead_of_the_serving_workers(
    mods, app, manager, monkeypatch
):
    """At the release's niceness (the engine's, raised for the run), as its checks
    do; one kept for a later rollback at the keeper's, and it keeps no other."""
    monkeypatch.setattr(djangoapp_gunicorn, "STANDBY_ANSWER", 10.0)
    service = djangoapp_gunicorn.Service(app, djangoapp_host.Host(mods["cmd.run_all"]))
    release = os.path.realpath(manager.base / "current")
    with djangoapp_procs.raised_priority(-5):
        standby = service.prepare_standby(release, "test")
        assert standby and os.getpriority(os.PRIO_PROCESS, standby) == -5
        later = service.prepare_standby(release, later=True)  # in its place
    assert later and os.getpriority(os.PRIO_PROCESS, later) == 0
    asked = json.loads(pathlib.Path(service.standby_file).read_text())
    assert asked["keep_previous"] is False
    service.drop_standby()
    assert manager.state()["standby"] is None
    assert _gone(standby, 10) and _gone(later, 10)


def test_a_reload_ends_a_standby_of_the_live_release(mods, app, manager):
    """A reload takes up a changed environment or config, which a standby
    started before it has not read."""
    standby = _start_standby(manager, os.path.realpath(manager.base / "current"))
    ret = mods["djangoapp.reload"]("preloaded")
    assert (ret["result"], ret["method"], ret["standby"]) == (True, "preloaded", False)
    assert ret["master"] == manager.state()["live"] != standby
    assert _gone(standby, 10), "the standby master did not stop"
    assert len(_workers(mods)) == WORKERS


def test_a_hand_over_takes_the_standby_of_its_release_and_no_other(manager):
    """What the keeper does with a SIGHUP (``systemctl reload``) and a standby."""
    live = os.path.realpath(manager.base / "current")
    other = next(
        path
        for path in (manager.base / "releases").iterdir()
        if str(path) != live and (path / "venv" / "bin" / "python").exists()
    )
    for release, taken in ((other, False), (live, True)):
        standby = _start_standby(manager, release)
        request = manager.state()["requests"] + 1
        manager.keeper.send_signal(signal.SIGHUP)
        state = manager.wait_for_answer(request)
        assert (state["last"]["result"], state["last"]["standby"]) == ("ready", taken)
        assert (state["live"] == standby) is taken
        assert state["standby"] is None
        if not taken:
            assert _gone(standby, 10), "the standby master did not stop"
    assert _page(manager.socket_path) == (200, "version 2")


def test_reload_and_rollback_start_a_new_master_too(mods, app, manager):
    live = manager.state()["live"]
    ret = mods["djangoapp.reload"]("preloaded")
    assert (ret["result"], ret["method"]) == (True, "preloaded"), ret
    assert ret["master"] == manager.state()["live"] != live
    ret = mods["djangoapp.rollback"]("preloaded")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    assert _step(ret, "reload")["method"] == "preloaded"
    assert _page(manager.socket_path) == (200, "version 1")


def _update_keeper_program(base, line):
    """The formula installs a newer gunicorn-keeper; its digest."""
    installed = base / "gunicorn-keeper"
    installed.write_text(installed.read_text() + f"\n# {line}\n")
    return hashlib.sha256(installed.read_bytes()).hexdigest()


def test_a_keeper_renews_itself_keeping_its_masters(base, manager):
    """SIGWINCH: the keeper's process executes the program's file again, and the
    new program serves on with the masters and socket the old one had."""
    before = manager.state()
    assert (
        before["program"]
        == hashlib.sha256((base / "gunicorn-keeper").read_bytes()).hexdigest()
    )
    digest = _update_keeper_program(base, "renewed by a signal")
    with Client(str(manager.socket_path)) as client:
        manager.keeper.send_signal(signal.SIGWINCH)
        deadline = time.monotonic() + 30
        while manager.state().get("program") != digest:
            assert time.monotonic() < deadline, manager.log()
            assert manager.keeper.poll() is None, manager.log()
            time.sleep(0.05)
        time.sleep(0.3)
    after = manager.state()
    assert (after["pid"], after["live"]) == (manager.keeper.pid, before["live"])
    assert (after["requests"], after["last"]) == (before["requests"], before["last"])
    assert client.failures == [] and client.answers
    # the new program hands over as the old one did
    manager.keeper.send_signal(signal.SIGHUP)
    handed = manager.wait_for_answer(before["requests"] + 1)
    assert handed["last"]["result"] == "ready" and handed["live"] != before["live"]
    assert _gone(before["live"]), "the old master did not stop"
    assert _page(manager.socket_path) == (200, "version 1")


def test_a_reload_renews_a_keeper_older_than_its_program(mods, base, app, manager):
    """What state.apply does when the formula updated gunicorn-keeper."""
    digest = _update_keeper_program(base, "renewed by a reload")
    live = manager.state()["live"]
    with Client(str(manager.socket_path)) as client:
        ret = mods["djangoapp.reload"]("preloaded")
    assert (ret["result"], ret["method"], ret["keeper_renewed"]) == (
        True,
        "preloaded",
        True,
    ), ret
    state = manager.state()
    assert (state["pid"], state["program"]) == (manager.keeper.pid, digest)
    assert ret["master"] == state["live"] != live
    assert client.failures == []
    # the program is the one it runs now: the next reload renews nothing
    ret = mods["djangoapp.reload"]("preloaded")
    assert (ret["result"], ret["keeper_renewed"]) == (True, False), ret


def _children(pid):
    children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return sorted(int(child) for child in children.split())


def test_a_hand_over_stopped_midway_leaves_no_priority_shifted(
    mods, base, app, manager
):
    """The engine killed in a preloaded hand-over (its lock file says where): the
    keeper boosted, the serving master's workers held back. The next run puts
    them back at the process manager's niceness before its own hand-over, which
    would otherwise take the keeper's boost for the normal."""
    keeper, live = manager.keeper.pid, manager.state()["live"]
    workers = _children(live)
    os.setpriority(os.PRIO_PROCESS, keeper, -5)
    for worker in workers:
        os.setpriority(os.PRIO_PROCESS, worker, 10)
    stopped = {"action": "reload", "pid": 999999, "step": "reload"}
    (base / ".release.lock").write_text(json.dumps(stopped))
    ret = mods["djangoapp.reload"]("preloaded")
    assert (ret["result"], ret["method"]) == (True, "preloaded"), ret
    interrupted = [
        json.loads(line)
        for line in (base / "ledger.jsonl").read_text().splitlines()
        if '"interrupted"' in line
    ][-1]
    assert interrupted["recovered"] == [f"priorities back to 0: {[keeper, *workers]}"]
    serving = [keeper, ret["master"], *_children(ret["master"])]
    assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in serving] == [0] * len(
        serving
    )


def test_a_put_back_during_an_unfinished_hand_over_boosts_the_standby_it_takes(
    mods, base, app, manager, monkeypatch
):
    """A run stopped by a signal in its hand-over puts back the release that was
    live with a hand-over of its own, while the keeper is still finishing the
    first: that one's standby took over and, once ready, the keeper keeps one of
    the release it replaced, WARM_NICENESS behind. The put-back takes it, and
    boosts it although it came after the put-back began (under load, a master
    10 behind the serving workers hardly imports)."""
    monkeypatch.setattr(djangoapp_gunicorn, "STANDBY_ANSWER", 10.0)
    service = djangoapp_gunicorn.Service(app, djangoapp_host.Host(mods["cmd.run_all"]))
    layout = djangoapp_disk.Layout(str(base))
    back = layout.current_id()
    other = next(
        path.name
        for path in (base / "releases").iterdir()
        if path.name != back and (path / "venv" / "bin" / "python").exists()
    )
    keeper, live = manager.keeper.pid, manager.state()["live"]
    # the stopped run: its release's standby, current switched, SIGHUP, gone
    standby = service.prepare_standby(layout.release(other), "test")
    djangoapp_disk.switch_current(layout, other)
    manager.keeper.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while manager.state().get("starting") != standby:
        assert time.monotonic() < deadline, manager.log()
        time.sleep(0.005)
    before = _children(keeper)
    djangoapp_disk.switch_current(layout, back)
    how = djangoapp_gunicorn.PreloadedHandOver(service, live).run(60)
    warm = how["master"]
    assert (how["method"], how["standby"]) == ("preloaded", True), how
    assert warm not in before
    assert _release_of(warm) == os.path.realpath(base / "releases" / back)
    assert warm in how["boosted"]
    serving = [keeper, warm, *_children(warm)]
    assert [os.getpriority(os.PRIO_PROCESS, pid) for pid in serving] == [0] * len(
        serving
    )
    assert _gone(standby, 10), "the master of the unfinished hand-over did not stop"


def test_a_master_that_cannot_start_leaves_the_serving_one(mods, base, app, manager):
    state = manager.state()
    live = os.readlink(base / "current")
    broken = base / "releases" / "no-virtualenv"
    broken.mkdir()
    os.symlink("releases/no-virtualenv", base / "current.new")
    os.replace(base / "current.new", base / "current")
    try:
        manager.keeper.send_signal(signal.SIGHUP)
        after = manager.wait_for_answer(state["requests"] + 1)
    finally:
        os.symlink(live, base / "current.new")
        os.replace(base / "current.new", base / "current")
        broken.rmdir()
    assert after["last"]["result"] == "failed"
    assert after["last"]["error"] == (
        f"master {after['last']['master']} exited (127) before ready"
    )
    assert after["live"] == state["live"]
    assert _page(manager.socket_path) == (200, "version 1")
    keeper = mods["djangoapp.status"]("preloaded")["service"]["keeper"]
    assert keeper == {
        "pid": manager.keeper.pid,
        "last_handover": after["last"],
        "standby": None,
    }


def test_a_killed_master_is_replaced_while_the_socket_keeps_the_requests(
    mods, app, manager
):
    live = manager.state()["live"]
    with Client(str(manager.socket_path)) as client:
        time.sleep(0.3)
        os.kill(live, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while manager.state().get("live") in (live, None):
            assert time.monotonic() < deadline, manager.log()
            time.sleep(0.05)
        time.sleep(0.3)
    assert client.failures == []
    assert _parent(manager.state()["live"]) == manager.keeper.pid
    assert len(_workers(mods)) == WORKERS


def test_the_keeper_stops_its_masters_when_told_to(manager):
    live = manager.state()["live"]
    workers = _children(live)
    assert len(workers) == WORKERS
    manager.keeper.send_signal(signal.SIGTERM)
    assert manager.keeper.wait(30) == 0
    assert all(_gone(pid, 5) for pid in [live, *workers])


def test_a_reload_as_the_keeper_starts_hands_over_all_the_same(mods, app, manager):
    """As on a first converge: the process manager has just started the keeper,
    which has not started its first master yet, when the state's reload comes."""
    manager.start()
    ret = mods["djangoapp.reload"]("preloaded")
    assert (ret["result"], ret["method"]) == (True, "preloaded"), ret
    state = manager.state()
    assert (state["pid"], state["live"]) == (manager.keeper.pid, ret["master"])
    assert (state["requests"], state["last"]["request"]) == (1, 1)


def test_the_masters_of_a_keeper_that_died_stop_with_it(app, manager):
    """The process manager starts a new keeper, which starts a new master: none of
    the old ones may be left serving."""
    live = manager.state()["live"]
    workers = _children(live)
    manager.keeper.send_signal(signal.SIGKILL)
    manager.keeper.wait(5)
    assert all(_gone(pid, 10) for pid in [live, *workers])


def test_a_keeper_from_before_standbys_is_sent_no_sigusr1(mods, app, manager):
    """A keeper that an older formula started (keeper.json without ``standby``)
    has no handler for SIGUSR1, which would end it and its masters: the release
    starts no standby and hands over as before."""
    manager.start()
    state = manager.wait_for_answer(0)
    del state["standby"]
    (manager.base / "run" / "keeper.json").write_text(json.dumps(state))
    ret = mods["djangoapp.release"]("v1.2.0", app="preloaded")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    assert _step(ret, "preflight")["standby"] == 0
    assert _step(ret, "reload")["standby"] is False
    assert (manager.keeper.poll(), manager.state()["pid"]) == (None, manager.keeper.pid)


def test_a_standby_that_cannot_import_the_app_leaves_the_checks_to_a_process(
    mods, app, manager
):
    """The standby ends importing the app: the engine runs the preflight in a
    process of its own, which says what failed."""
    live = manager.state()["live"]  # v1.2.0, released by the test before
    ret = mods["djangoapp.release"]("broken-import-v1.2", app="preloaded")
    assert (ret["result"], ret["failed_step"]) == (False, "preflight")
    preflight = _step(ret, "preflight")
    assert preflight["standby"] not in (0, live)
    assert preflight["in_standby"] is False
    assert preflight["standby_answer"] == "the standby ended before it answered"
    assert ret["error"].startswith(
        "import failed: ModuleNotFoundError: No module named 'no_such_module'"
    ), ret["error"]
    assert manager.state()["live"] == live
    assert not list((manager.base / "run").glob("preflight-*"))


def test_a_release_that_brings_migrations_is_checked_in_a_process_that_stays(
    mods, app, manager
):
    """A migration file changed since the live release: the preflight's own
    process stays to migrate, Django set up, while the standby imports beside."""
    ret = mods["djangoapp.release"]("code-accounted", app="preloaded")
    assert ret["result"] is True, ret.get("error")
    preflight = _step(ret, "preflight")
    assert preflight["in_standby"] is False
    assert preflight["timings"]["setup"] >= 0
    assert ret["pending_migrations"] == ["tinyapp.0003_touch"]
    assert _step(ret, "migrate")["in_preflight_process"] is True
    assert _step(ret, "reload")["master"] == preflight["standby"]


def test_migrations_the_standby_finds_run_in_a_process_started_at_once(
    mods, app, base, manager
):
    """No migration file changed, yet the database lacks one (here: its record
    deleted): the standby finds it pending, and a process of the release that
    set Django up meanwhile runs it."""
    with sqlite3.connect(base / "shared" / "db.sqlite3") as database:
        database.execute(
            "DELETE FROM django_migrations WHERE app = ? AND name = ?",
            ("tinyapp", "0003_touch"),
        )
    ret = mods["djangoapp.release"]("code-accounted-views", app="preloaded")
    assert ret["result"] is True, ret.get("error")
    assert _step(ret, "preflight")["in_standby"] is True
    assert ret["pending_migrations"] == ["tinyapp.0003_touch"]
    assert _step(ret, "migrate")["in_preflight_process"] is True
    assert _page(manager.socket_path) == (200, "version 3")


class _Git:
    """What ``git diff --name-only`` answers, through the engine's ``Host``."""

    def __init__(self, changed, retcode=0):
        self.changed, self.retcode, self.asked = changed, retcode, []

    def run(self, argv, **_kwargs):
        self.asked.append(argv)
        return {"retcode": self.retcode, "stdout": "\n".join(self.changed)}


def _unlikely(host, live, digest="d1"):
    import types

    import djangoapp_standby

    run = types.SimpleNamespace(
        cfg={},
        layout=types.SimpleNamespace(mirror="/m.git"),
        host=host,
        deps_digest=digest,
        sha="new",
    )
    return djangoapp_standby.migrations_unlikely(run, live)


@pytest.mark.parametrize(
    ("changed", "retcode", "expected"),
    [
        (["shop/views.py", "README.md"], 0, True),
        ([], 0, True),
        (["shop/migrations/0007_price.py"], 0, False),
        (["shop/migrations/__init__.py"], 0, False),
        (["docs/migrations.md", "shop/views.py"], 0, True),
        ([], 128, False),  # the live commit is no longer in the mirror
    ],
)
def test_the_standby_checks_where_no_migration_file_changed(changed, retcode, expected):
    git = _Git(changed, retcode)
    assert _unlikely(git, {"sha": "old", "requirements": "d1"}) is expected
    assert git.asked == [
        [
            "git",
            "--git-dir=/m.git",
            "-c",
            "core.quotePath=off",
            "diff",
            "--name-only",
            "old",
            "new",
            "--",
        ]
    ]


@pytest.mark.parametrize(
    "live", [None, {"requirements": "d1"}, {"sha": "old", "requirements": "d2"}]
)
def test_a_release_with_other_requirements_or_no_live_commit_is_not_asked(live):
    git = _Git([])
    assert _unlikely(git, live) is False
    assert git.asked == []


def test_an_answer_is_read_from_a_file_only(tmp_path):
    """The run directory is the app user's: a link or a pipe in the answer's
    place is an error at once, never followed or waited on."""
    answer = tmp_path / "preflight-1.json"
    assert djangoapp_gunicorn.read_answer(str(answer)) is None
    os.mkfifo(answer)
    assert djangoapp_gunicorn.read_answer(str(answer)) == {
        "error": f"{answer}: not a file"
    }
    answer.unlink()
    answer.symlink_to("/etc/hostname")
    assert djangoapp_gunicorn.read_answer(str(answer)) == {
        "error": f"{answer}: a link, not a file"
    }
    answer.unlink()
    answer.write_text('{"request": "1", "ok": true}')
    assert djangoapp_gunicorn.read_answer(str(answer)) == {"request": "1", "ok": True}


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_root_reads_the_app_user_s_run_files_only_as_files(tmp_path, kind):
    """Gunicorn's pidfile, the master's, the keeper's and the workers' records are
    the app user's: a pipe in their place is not waited on and a link is not
    followed (each reads as absent), where a file is read."""
    run = tmp_path / "run"
    (run / "workers").mkdir(parents=True)
    cfg = {
        "process_manager": "supervisor",
        "service": "nothing-of-the-kind",
        "run_dir": str(run),
        "control_socket": None,
        "preload_app": True,
    }
    service = djangoapp_gunicorn.Service(cfg, None)
    target = tmp_path / "root-only.json"
    target.write_text(json.dumps({"pid": os.getpid(), "program": "x"}))
    files = [
        service.pidfile,
        service.master_state_file,
        service.keeper_state_file,
        os.path.join(service.worker_state_dir, f"{os.getpid()}.json"),
    ]
    for path in files:
        if kind == "fifo":
            os.mkfifo(path)
        else:
            os.symlink(target, path)
    started = time.monotonic()
    assert service.pidfile_master() == 0
    assert service.master_state(os.getpid()) is None
    assert service.keeper_state() == {}
    assert service.worker_reports() == {}
    assert time.monotonic() - started < 5
    for path in files:
        os.unlink(path)
    shutil.copy(target, service.keeper_state_file)
    shutil.copy(target, os.path.join(service.worker_state_dir, "41.json"))
    assert service.keeper_state()["program"] == "x"
    assert service.worker_reports() == {41: {"pid": os.getpid(), "program": "x"}}
