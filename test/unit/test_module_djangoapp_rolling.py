"""
The rolling hand-over with a real Gunicorn: releases of the tiny project served
by Gunicorn with the formula's own gunicorn.conf.py (rendered by Salt), while a
client keeps requesting the page through Gunicorn's socket. Workers are added
and removed on the control socket; a release of the tiny project must not lose
a single request, and each worker must run the new release with SENTRY_RELEASE
naming it.

As in test_module_djangoapp_verify.py, the process manager is a stand-in: a
``supervisorctl`` script on PATH reporting the master's pid, read from
Gunicorn's pidfile (the engine does not take the pidfile alone as proof here:
the master's parent is not supervisord).

The tests run in file order and share one app.
"""

import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time

import pytest
from standins import Health

REPO = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "salt" / "djangoapp" / "files" / "gunicorn.conf.py.jinja"
WORKERS = 2


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Client:
    """Requests the page in a loop; counts failures and the answers seen."""

    def __init__(self, path):
        self.path = path
        self.answers = []
        self.failures = []
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while self.running:
            connection = UnixHTTPConnection(self.path)
            try:
                connection.request("GET", "/", headers={"Host": "example.com"})
                response = connection.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}")
                else:
                    self.answers.append(body)
            except OSError as exc:
                self.failures.append(repr(exc))
            finally:
                connection.close()
            time.sleep(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join(15)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("rolling") / "srv"


def gunicorn_settings(base, name):
    run = base / "run"
    return {
        "name": name,
        "service": f"djangoapp-{name}",
        "gunicorn_config": str(base / "gunicorn.conf.py"),
        "env_file": None,  # filled in by the app fixture
        "base_dir": str(base),
        "project_dir": ".",
        "run_dir": str(run),
        "socket": str(run / "gunicorn.sock"),
        "control_socket": str(run / "gunicorn.ctl"),
        "server": "wsgi",
        "worker_class": "sync",
        "threads": 1,
        "workers": WORKERS,
        "timeout": 30,
        "graceful_timeout": 5,
        "preload_app": False,
    }


def render_config(mods, settings, extra=""):
    text = mods["file.apply_template_on_contents"](
        contents=TEMPLATE.read_text(),
        template="jinja",
        context={"app": settings},
        defaults=None,
        saltenv="base",
    )
    pathlib.Path(settings["gunicorn_config"]).write_text(text + extra)


def served_app(tiny_app, base, settings, health_server, mods, extra="", **overrides):
    """app.json and env.json of the tiny app served by Gunicorn with ``settings``
    (the formula's config rendered once, with ``extra`` appended), its health URL
    on ``health_server``; ``overrides`` of app.json's values."""
    (base / "run").mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{health_server.server_address[1]}/healthz/"
    cfg = tiny_app(
        settings["name"],
        base,
        health={"url": url, "host": "example.com", "timeout": 5, "verify_tls": False},
        graceful_timeout=settings["graceful_timeout"],
        gunicorn_config=settings["gunicorn_config"],
        run_dir=settings["run_dir"],
        control_socket=settings["control_socket"],
        preload_app=settings["preload_app"],
        **overrides,
    )
    settings["env_file"] = cfg["env_file"]
    if not pathlib.Path(settings["gunicorn_config"]).exists():
        render_config(mods, settings, extra=extra)
    return cfg


@pytest.fixture
def app(tiny_app, base, fake_pm, health_server, monkeypatch, mods):
    monkeypatch.setenv("PATH", f"{fake_pm}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MASTER_PIDFILE", str(base / "run" / "gunicorn.pid"))
    settings = gunicorn_settings(base, "rolling")
    return served_app(tiny_app, base, settings, health_server, mods)


def _ready_workers(run_dir):
    workers = run_dir / "workers"
    return {path.stem for path in workers.glob("*.json")} if workers.is_dir() else set()


def _wait_for_new_workers(run_dir, master, log, old=frozenset()):
    """The pids of WORKERS workers of ``master`` that reported ready, none of
    ``old``; ``log`` (its stderr) in the error when it exits or is late."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = _ready_workers(run_dir)
        if len(ready) >= WORKERS and not ready & old:
            return ready
        assert master.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    raise AssertionError(log.read_text()[-3000:])


@pytest.fixture(scope="module")
def master(base):
    procs = []

    def start():
        python = base / "current" / "venv" / "bin" / "python"
        proc = subprocess.Popen(
            [
                str(python),
                "-m",
                "gunicorn",
                "--config",
                str(base / "gunicorn.conf.py"),
                "tinysite.wsgi:application",
            ],
            cwd=str(base),
            env={"PATH": os.environ["PATH"], "PWD": str(base), "HOME": str(base)},
            stdout=subprocess.DEVNULL,
            stderr=open(base / "gunicorn.log", "ab"),  # noqa: SIM115
        )
        procs.append(proc)
        _wait_for_new_workers(base / "run", proc, base / "gunicorn.log")
        return proc

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _step(ret, name):
    return next(s for s in ret["steps"] if s["name"] == name)


def _worker_versions(mods):
    status = mods["djangoapp.status"]("rolling")
    return {(w["release"], w["version"]) for w in status["workers"]}


def test_first_release_then_gunicorn_starts(mods, app, base, master):
    ret = mods["djangoapp.release"]("v1.0.0", app="rolling")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    proc = master()
    # what the master loaded, for the engine to compare with the next release
    state = json.loads((base / "run" / "gunicorn.json").read_text())
    info = json.loads((base / "releases" / ret["id"] / "release.json").read_text())
    assert state["pid"] == proc.pid
    assert state["gunicorn"] == info["gunicorn"]
    assert state["config_sha256"] == info["gunicorn_config"]
    assert (base / "run" / "gunicorn.pid").read_text().strip() == str(proc.pid)
    assert _worker_versions(mods) == {(ret["id"], "v1.0.0")}


def release_while_requested(mods, socket_path, version, app):
    """``djangoapp.release`` while a client requests the page; returns the
    release's return and the client."""
    with Client(str(socket_path)) as client:
        time.sleep(0.5)
        ret = mods["djangoapp.release"](version, app=app)
        time.sleep(0.5)
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    return ret, client


def test_release_hands_the_workers_over_without_a_failed_request(mods, app, base):
    socket_path = base / "run" / "gunicorn.sock"
    ret, client = release_while_requested(mods, socket_path, "v1.1.0", "rolling")
    reload = _step(ret, "reload")
    assert reload["method"] == "rolling", reload
    assert reload["workers_added"] == WORKERS
    assert _step(ret, "verify")["workers"]
    assert client.failures == []
    assert "version 1" in client.answers and client.answers[-1] == "version 2"
    assert _worker_versions(mods) == {(ret["id"], "v1.1.0")}
    # the hand-over restored the worker count and the workers' priority
    status = mods["djangoapp.status"]("rolling")
    assert len(status["workers"]) == WORKERS
    for worker in status["workers"]:
        assert os.getpriority(os.PRIO_PROCESS, worker["pid"]) == 0
    # the gunicorn config and version did not change: no second check-config
    assert _step(ret, "preflight")["gunicorn_check_config"] is False


def test_failed_health_check_hands_back_the_same_way(mods, app, base):
    before = os.readlink(base / "current").split("/")[-1]
    Health.status["code"] = 500
    try:
        with Client(str(base / "run" / "gunicorn.sock")) as client:
            ret = mods["djangoapp.release"]("v1.2.0", app="rolling")
            time.sleep(0.5)
    finally:
        Health.status["code"] = 200
    assert ret["result"] is False
    assert ret["failed_step"] == "health", (ret["failed_step"], ret["error"])
    assert _step(ret, "reload")["method"] == "rolling"
    assert "handed the workers over to it (rolling)" in ret["restored"]
    assert any(r.startswith(f"workers back on {before}") for r in ret["restored"])
    assert client.failures == []
    assert client.answers[-1] == "version 2"
    assert _worker_versions(mods) == {(before, "v1.1.0")}
    assert len(mods["djangoapp.status"]("rolling")["workers"]) == WORKERS


def test_rollback_hands_over_too(mods, app, base):
    with Client(str(base / "run" / "gunicorn.sock")) as client:
        ret = mods["djangoapp.rollback"]("rolling")
        time.sleep(0.5)
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    assert _step(ret, "reload")["method"] == "rolling"
    assert client.failures == []
    assert client.answers[-1] == "version 1"
    assert _worker_versions(mods) == {(ret["id"], "v1.0.0")}


def test_changed_gunicorn_config_takes_a_hup(mods, app, base):
    settings = gunicorn_settings(base, "rolling")
    settings["env_file"] = app["env_file"]
    render_config(mods, settings, extra="\n# changed\n")
    ret = mods["djangoapp.release"]("v1.1.0", app="rolling")
    assert ret["result"] is True, (ret.get("error"), ret.get("restored"))
    reload = _step(ret, "reload")
    assert reload["method"] == "hup"
    assert "config changed" in reload["reason"]
    # the config changed: gunicorn --check-config ran again
    assert _step(ret, "preflight")["gunicorn_check_config"] is True
    assert _worker_versions(mods) == {(ret["id"], "v1.1.0")}
    # the master read the new config on the HUP: the next one rolls again
    state = json.loads((base / "run" / "gunicorn.json").read_text())
    assert state["config_sha256"] == _sha256(base / "gunicorn.conf.py")
    ret = mods["djangoapp.rollback"]("rolling")
    assert _step(ret, "reload")["method"] == "rolling", ret


def test_a_config_gunicorn_cannot_read_stops_the_release_at_its_preflight(
    mods, app, base
):
    settings = gunicorn_settings(base, "rolling")
    settings["env_file"] = app["env_file"]
    render_config(mods, settings, extra="\nworkers = 'many'\n")
    live = os.readlink(base / "current")
    workers = {w["pid"] for w in mods["djangoapp.status"]("rolling")["workers"]}
    try:
        ret = mods["djangoapp.release"]("v1.2.0", app="rolling")
    finally:
        render_config(mods, settings, extra="\n# changed\n")
    assert (ret["result"], ret["failed_step"]) == (False, "preflight")
    assert ret["error"].startswith(
        "gunicorn_config failed: RuntimeError: gunicorn --check-config failed: "
        "Invalid value for workers: many"
    ), ret["error"]
    assert os.readlink(base / "current") == live
    assert {w["pid"] for w in mods["djangoapp.status"]("rolling")["workers"]} == workers


def _sha256(path):
    import hashlib

    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


# Appended to the formula's config: each worker records, once it has loaded the app,
# its niceness and the ROLLING_MARK of its environment.
WORKER_RECORDER = """
_formula_post_worker_init = post_worker_init


def post_worker_init(worker):
    with open(os.path.join(RUN_DIR, f"recorded-{worker.pid}.json"), "w") as record:
        json.dump(
            {
                "niceness": os.getpriority(os.PRIO_PROCESS, 0),
                "mark": os.environ.get("ROLLING_MARK"),
            },
            record,
        )
    _formula_post_worker_init(worker)
"""


def _recorded(base, pid):
    return json.loads((base / "run" / f"recorded-{pid}.json").read_text())


def test_new_workers_boot_ahead_and_end_at_the_masters_priority(mods, app, base):
    settings = gunicorn_settings(base, "rolling")
    settings["env_file"] = app["env_file"]
    render_config(mods, settings, extra=WORKER_RECORDER)
    live = os.readlink(base / "current").split("/")[-1]
    releases = os.listdir(base / "releases")
    other = next(r for r in releases if r not in (live, ".venvs"))
    # the config changed: this one is a HUP, after which the master has the recorder
    ret = mods["djangoapp.rollback"]("rolling", to=other)
    assert _step(ret, "reload")["method"] == "hup", ret
    ret = mods["djangoapp.rollback"]("rolling", to=live)
    assert _step(ret, "reload")["method"] == "rolling", ret
    workers = mods["djangoapp.status"]("rolling")["workers"]
    assert len(workers) == WORKERS
    master_pid = int((base / "run" / "gunicorn.pid").read_text())
    assert os.getpriority(os.PRIO_PROCESS, master_pid) == 0
    for worker in workers:
        # loaded the app boosted, and serves at the master's priority
        assert _recorded(base, worker["pid"])["niceness"] == -5, worker
        assert os.getpriority(os.PRIO_PROCESS, worker["pid"]) == 0


def test_reload_hands_a_changed_environment_over_without_a_failed_request(
    mods, app, base
):
    env_file = pathlib.Path(app["env_file"])
    original = env_file.read_text()
    env_file.write_text(json.dumps(dict(json.loads(original), ROLLING_MARK="second")))
    try:
        before = {w["pid"] for w in mods["djangoapp.status"]("rolling")["workers"]}
        with Client(str(base / "run" / "gunicorn.sock")) as client:
            ret = mods["djangoapp.reload"]("rolling")
            time.sleep(0.3)
        assert ret["result"] is True, ret
        assert ret["method"] == "rolling", ret
        assert client.failures == []
        assert len(ret["workers"]) == WORKERS and not set(ret["workers"]) & before
        for pid in ret["workers"]:
            assert _recorded(base, pid)["mark"] == "second"
        # the release lock was taken and given back
        assert (base / ".release.lock").read_text() == ""
    finally:
        env_file.write_text(original)


def test_reload_of_a_changed_gunicorn_config_takes_a_hup(mods, app, base):
    settings = gunicorn_settings(base, "rolling")
    settings["env_file"] = app["env_file"]
    render_config(mods, settings)
    before = {w["pid"] for w in mods["djangoapp.status"]("rolling")["workers"]}
    with Client(str(base / "run" / "gunicorn.sock")) as client:
        ret = mods["djangoapp.reload"]("rolling")
        time.sleep(0.3)
    assert ret["result"] is True, ret
    assert ret["method"] == "hup" and "config changed" in ret["reason"], ret
    assert client.failures == []
    assert ret["workers"] and not set(ret["workers"]) & before
    state = json.loads((base / "run" / "gunicorn.json").read_text())
    assert state["config_sha256"] == _sha256(base / "gunicorn.conf.py")


def _page(path):
    connection = UnixHTTPConnection(str(path))
    try:
        connection.request("GET", "/", headers={"Host": "example.com"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_master_handed_its_socket_as_stdin_serves_on_it_also_after_a_hup(
    mods, app, base
):
    """As under Supervisor: the socket bound by the process manager (here the
    test) comes as stdin, and the master neither binds the path again nor, on a
    HUP, lets go of it."""
    run_dir = base / "run-handed"
    run_dir.mkdir()
    settings = gunicorn_settings(base, "rolling")
    settings.update(
        env_file=app["env_file"],
        gunicorn_config=str(run_dir / "gunicorn.conf.py"),
        run_dir=str(run_dir),
        socket=str(run_dir / "gunicorn.sock"),
        control_socket=str(run_dir / "gunicorn.ctl"),
    )
    render_config(mods, settings)
    socket_path = run_dir / "gunicorn.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(64)
    bound_inode = socket_path.stat().st_ino
    with open(run_dir / "gunicorn.log", "ab") as log:
        master = subprocess.Popen(
            [
                str(base / "current" / "venv" / "bin" / "python"),
                "-m",
                "gunicorn",
                "--config",
                settings["gunicorn_config"],
                "tinysite.wsgi:application",
            ],
            cwd=str(base),
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(base),
                "DJANGOAPP_LISTEN_FD": "0",
            },
            stdin=listener,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    listener.close()
    try:
        first = _wait_for_new_workers(run_dir, master, run_dir / "gunicorn.log")
        assert _page(socket_path) == 200
        assert socket_path.stat().st_ino == bound_inode
        master.send_signal(signal.SIGHUP)
        _wait_for_new_workers(run_dir, master, run_dir / "gunicorn.log", first)
        assert _page(socket_path) == 200
        assert socket_path.stat().st_ino == bound_inode
        assert master.poll() is None
    finally:
        master.send_signal(signal.SIGTERM)
        master.wait(30)
