"""
Unit tests of the engine's dealings with a running Gunicorn and with the
build's reuse of the live release: which process is the master, Gunicorn's
control socket, the choice between a rolling hand-over and a HUP, events,
byte-code reuse, pruning and the environment of the app's commands.
"""

import json
import os
import pathlib
import socket
import struct
import subprocess
import sys
import threading
import time

import djangoapp_build
import djangoapp_common
import djangoapp_deps
import djangoapp_disk
import djangoapp_django
import djangoapp_gunicorn
import djangoapp_host
import pytest
from salt.exceptions import CommandExecutionError

# --------------------------------------------------------------------------
# events


def test_no_event_sender_when_masterless_without_a_minion_daemon(tmp_path):
    def send(tag, data):
        return True

    pidfile = tmp_path / "salt-minion.pid"
    masterless = {"file_client": "local", "pidfile": str(pidfile)}
    assert djangoapp_host.event_sender(masterless, send) is None
    pidfile.write_text("999999999\n")
    assert djangoapp_host.event_sender(masterless, send) is None
    pidfile.write_text(f"{os.getpid()}\n")
    assert djangoapp_host.event_sender(masterless, send) is send
    with_master = {"file_client": "remote", "pidfile": str(tmp_path / "none")}
    assert djangoapp_host.event_sender(with_master, send) is send
    told_to_use_master = dict(masterless, use_master_when_local=True)
    pidfile.unlink()
    assert djangoapp_host.event_sender(told_to_use_master, send) is send
    assert djangoapp_host.event_sender(with_master, None) is None


def test_background_command_holds_no_output_open():
    reader, writer = os.pipe()
    saved = os.dup(1)
    os.dup2(writer, 1)
    try:
        djangoapp_host.Host.run_background(["sleep", "5"])
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(writer)
    started = time.monotonic()
    assert os.read(reader, 10) == b""  # end of file: nobody else holds the pipe
    assert time.monotonic() - started < 2
    os.close(reader)


# --------------------------------------------------------------------------
# Gunicorn's control socket


class FakeControl:
    """
    Speaks Gunicorn's control protocol and, like Gunicorn forking a worker,
    loses the answer to a change of the worker count (the change is made) and
    drops the next connection unread.
    """

    def __init__(self, path, pid=4242, workers=3):
        self.path = str(path)
        self.stats = {"pid": pid, "workers_target": workers}
        self.config = {"workers": workers}
        self.commands = []
        self.restarting = False
        self.silent = 0  # connections to take and never answer
        self.answer_changes = False  # answer a change of the count, as Gunicorn can
        self.held = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(8)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.silent:
                self.silent -= 1
                self.held.append(conn)
                continue
            with conn:
                if self.restarting:
                    self.restarting = False
                    continue
                (length,) = struct.unpack(">I", conn.recv(4))
                text = json.loads(conn.recv(length))["command"]
                self.commands.append(text)
                words = text.split()
                if words[:2] == ["show", "stats"]:
                    answer = {"status": "ok", "data": dict(self.stats)}
                elif words[:2] == ["show", "config"]:
                    answer = {"status": "ok", "data": dict(self.config)}
                elif words[:1] == ["worker"] and words[1] in ("add", "remove"):
                    change = int(words[2]) * (1 if words[1] == "add" else -1)
                    self.stats["workers_target"] += change
                    if not self.answer_changes:
                        self.restarting = True
                        continue
                    answer = {
                        "status": "ok",
                        "data": {"total": self.stats["workers_target"]},
                    }
                else:
                    answer = {"status": "error", "error": f"Unknown command: {text}"}
                payload = json.dumps(answer).encode()
                conn.sendall(struct.pack(">I", len(payload)) + payload)

    def close(self):
        self.server.close()


@pytest.fixture
def fake_control(tmp_path):
    control = FakeControl(tmp_path / "gunicorn.ctl")
    yield control
    control.close()


def test_control_commands_and_worker_count_survive_lost_answers(fake_control):
    client = djangoapp_gunicorn.GunicornControl(
        fake_control.path, timeout=5, attempt=0.5
    )
    assert client.command("show stats")["pid"] == 4242
    client.set_workers(6)
    assert fake_control.stats["workers_target"] == 6
    # the lost answer of "worker add 3" did not make the client add again
    assert [c for c in fake_control.commands if c.startswith("worker")] == [
        "worker add 3"
    ]
    client.set_workers(2)
    assert fake_control.stats["workers_target"] == 2
    with pytest.raises(CommandExecutionError, match="Unknown command"):
        client.command("reboot")


def test_a_connection_nobody_answers_is_given_up_and_made_again(fake_control):
    """As when a connection lands in the socket a forked worker inherited."""
    fake_control.silent = 1
    client = djangoapp_gunicorn.GunicornControl(
        fake_control.path, timeout=5, attempt=0.3
    )
    started = time.monotonic()
    assert client.command("show stats")["pid"] == 4242
    assert time.monotonic() - started < 2


def test_a_change_answered_with_the_new_count_is_not_looked_at_again(fake_control):
    fake_control.answer_changes = True
    client = djangoapp_gunicorn.GunicornControl(fake_control.path, timeout=5)
    client.set_workers(6)
    assert fake_control.stats["workers_target"] == 6
    assert fake_control.commands == ["show stats", "worker add 3"]


def test_control_socket_that_does_not_answer(tmp_path):
    client = djangoapp_gunicorn.GunicornControl(
        str(tmp_path / "none.ctl"), timeout=0.2, attempt=0.1
    )
    with pytest.raises(djangoapp_gunicorn.ControlSocketError):
        client.command("show stats")


# --------------------------------------------------------------------------
# which process is the master

FAKE_MANAGER = """#!{python}
import subprocess, sys, time
child = subprocess.Popen([sys.executable, sys.argv[1], "--config", sys.argv[2], "app"])
print(child.pid, flush=True)
time.sleep(60)
"""
FAKE_GUNICORN = """#!{python}
import time
time.sleep(60)
"""


@pytest.fixture
def process_tree(tmp_path):
    """A `supervisord` running a `gunicorn --config <config>`."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("supervisord", FAKE_MANAGER), ("gunicorn", FAKE_GUNICORN)):
        (bindir / name).write_text(text.format(python=sys.executable))
        (bindir / name).chmod(0o755)
    config = str(tmp_path / "gunicorn.conf.py")
    manager = subprocess.Popen(
        [str(bindir / "supervisord"), str(bindir / "gunicorn"), config],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(manager.stdout.readline())
    yield manager.pid, child, config
    for pid in (child, manager.pid):
        os.kill(pid, 9)
    manager.wait()


def _service(tmp_path, config, manager="supervisor"):
    cfg = {
        "name": "demo",
        "gunicorn_config": config,
        "process_manager": manager,
        "service": "djangoapp-unit-test-no-such-service",
        "run_dir": str(tmp_path / "run"),
        "control_socket": None,
        "graceful_timeout": 30,
    }
    (tmp_path / "run").mkdir(exist_ok=True)
    host = djangoapp_host.Host(lambda argv, **kwargs: {"retcode": 1, "stdout": ""})
    return djangoapp_gunicorn.Service(cfg, host)


def test_master_from_pidfile_is_checked_against_proc(tmp_path, process_tree):
    _manager, child, config = process_tree
    service = _service(tmp_path, config)
    assert service.master_pid() == 0  # no pidfile, no process manager
    pathlib.Path(service.pidfile).write_text(f"{child}\n")
    deadline = time.monotonic() + 5
    while not service.is_master(child) and time.monotonic() < deadline:
        time.sleep(0.05)  # until the child has exec'd
    assert service.master_pid() == child
    # another app's config, another process manager, a stale pid: not ours
    assert _service(tmp_path, config + ".other").master_pid() == 0
    assert _service(tmp_path, config, manager="systemd").master_pid() == 0
    pathlib.Path(service.pidfile).write_text(f"{os.getpid()}\n")
    assert service.master_pid() == 0


def test_hup_signals_the_master(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "signal.signal(signal.SIGHUP, lambda *a: (print('HUP', flush=True), "
            "sys.exit(0)))\nprint('ready', flush=True)\ntime.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    _service(tmp_path, "/c").hup(proc.pid)
    assert proc.stdout.readline().strip() == "HUP"
    assert proc.wait(10) == 0


# --------------------------------------------------------------------------
# rolling hand-over or HUP


def _release_with_venv(layout, rid, gunicorn="27.0.1", python=sys.executable):
    venv = pathlib.Path(layout.release(rid)) / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    (site / f"gunicorn-{gunicorn}.dist-info").mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(os.path.realpath(python))


def test_hup_reason_compares_what_the_master_loaded(tmp_path):
    config = tmp_path / "gunicorn.conf.py"
    config.write_text("workers = 2\n")
    service = _service(tmp_path, str(config))
    layout = djangoapp_disk.Layout(str(tmp_path / "base"))
    _release_with_venv(layout, "r2")
    master = os.getpid()  # its executable: this test's python
    assert "not recorded" in djangoapp_gunicorn.hup_reason(
        service, layout, "r2", master
    )
    state = {
        "pid": master,
        "config_sha256": djangoapp_common.file_sha256(str(config)),
        "gunicorn": "27.0.1",
        "python": "3.11.2",
    }
    pathlib.Path(service.master_state_file).write_text(json.dumps(state))
    assert "no control socket" in djangoapp_gunicorn.hup_reason(
        service, layout, "r2", master
    )
    pathlib.Path(service.control_socket).touch()
    assert djangoapp_gunicorn.hup_reason(service, layout, "r2", master) is None
    # a record of another master is no record
    assert "not recorded" in djangoapp_gunicorn.hup_reason(
        service, layout, "r2", master + 1
    )

    config.write_text("workers = 3\n")
    assert "config changed" in djangoapp_gunicorn.hup_reason(
        service, layout, "r2", master
    )
    config.write_text("workers = 2\n")

    _release_with_venv(layout, "r3", gunicorn="28.0.0")
    assert (
        djangoapp_gunicorn.hup_reason(service, layout, "r3", master)
        == "gunicorn 27.0.1 runs, the release has 28.0.0"
    )
    _release_with_venv(layout, "r4", python="/bin/sh")
    assert "the master runs" in djangoapp_gunicorn.hup_reason(
        service, layout, "r4", master
    )


def test_venv_package_version(tmp_path):
    layout = djangoapp_disk.Layout(str(tmp_path))
    _release_with_venv(layout, "r1", gunicorn="25.1.0")
    venv = os.path.join(layout.release("r1"), "venv")
    assert djangoapp_build.venv_package_version(venv, "gunicorn") == "25.1.0"
    assert djangoapp_build.venv_package_version(venv, "django") is None


def test_gunicorn_check_config_is_skipped_only_when_nothing_changed(tmp_path):
    config = tmp_path / "gunicorn.conf.py"
    config.write_text("workers = 2\n")
    layout = djangoapp_disk.Layout(str(tmp_path / "base"))
    _release_with_venv(layout, "r2")
    src = pathlib.Path(layout.release("r2")) / "src"
    src.mkdir()
    (src / "requirements.txt").write_text("Django\n")
    cfg = {
        "gunicorn_config": str(config),
        "requirements": "requirements.txt",
        "python": "python3",
        "pip_extra": ["gunicorn"],
        "dependencies": "auto",
        "dependency_groups": [],
        "extras": [],
    }
    same = djangoapp_deps.Dependencies(cfg, str(src)).digest()
    live = {
        "gunicorn_config": djangoapp_common.file_sha256(str(config)),
        "gunicorn": "27.0.1",
        "requirements": same,
    }
    rdir = layout.release("r2")
    checked = djangoapp_django.gunicorn_checked
    assert checked(cfg, live, rdir, same) is True
    assert checked(cfg, None, rdir, same) is False
    assert checked(cfg, dict(live, gunicorn="26.0"), rdir, same) is False
    (src / "requirements.txt").write_text("Django\nhumanize\n")
    other = djangoapp_deps.Dependencies(cfg, str(src)).digest()
    assert other != same
    assert checked(cfg, live, rdir, other) is False
    config.write_text("workers = 3\n")
    assert checked(cfg, live, rdir, same) is False


# --------------------------------------------------------------------------
# byte-code of the live release


def _py(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_venv_bytecode_links_what_uv_linked(tmp_path):
    old = tmp_path / "old" / "venv" / "lib" / "python3.11" / "site-packages"
    new = tmp_path / "new" / "venv" / "lib" / "python3.11" / "site-packages"
    tag = "cpython-311"
    _py(old / "pkg" / "same.py", "A = 1\n")
    _py(old / "pkg" / "__pycache__" / f"same.{tag}.pyc", "bytecode")
    _py(old / "pkg" / "other.py", "B = 1\n")
    _py(old / "pkg" / "__pycache__" / f"other.{tag}.pyc", "bytecode")
    new.joinpath("pkg").mkdir(parents=True)
    os.link(old / "pkg" / "same.py", new / "pkg" / "same.py")  # as uv links them
    _py(new / "pkg" / "other.py", "B = 1\n")  # same text, another file
    _py(new / "pkg" / "fresh.py", "C = 1\n")
    linked, missing = djangoapp_build.venv_bytecode(
        str(tmp_path / "old" / "venv"), str(tmp_path / "new" / "venv")
    )
    assert linked == 1
    assert sorted(missing) == [
        str(new / "pkg" / "fresh.py"),
        str(new / "pkg" / "other.py"),
    ]
    old_pyc = old / "pkg" / "__pycache__" / f"same.{tag}.pyc"
    new_pyc = new / "pkg" / "__pycache__" / f"same.{tag}.pyc"
    assert new_pyc.stat().st_ino == old_pyc.stat().st_ino
    linked, missing = djangoapp_build.venv_bytecode(
        None, str(tmp_path / "new" / "venv")
    )
    assert linked == 0 and len(missing) == 3


def test_project_bytecode_of_unchanged_files_is_reused_and_valid(tmp_path):
    import importlib.util
    import py_compile

    tag = sys.implementation.cache_tag
    old, new = tmp_path / "old", tmp_path / "new"
    _py(old / "app" / "same.py", "A = 1\n")
    _py(old / "app" / "changed.py", "B = 1\n")
    for name in ("same", "changed"):
        py_compile.compile(str(old / "app" / f"{name}.py"), doraise=True)
    _py(new / "app" / "same.py", "A = 1\n")
    _py(new / "app" / "changed.py", "B = 2\n")
    _py(new / "app" / "added.py", "C = 1\n")
    os.utime(new / "app" / "same.py", (1, 1))  # as tar leaves them: commit time
    unchanged = djangoapp_build.link_project_bytecode(str(old), str(new), tag)
    assert unchanged == {str(new / "app" / "same.py")}
    assert sorted(djangoapp_build.project_sources(str(new), unchanged)) == [
        str(new / "app" / "added.py"),
        str(new / "app" / "changed.py"),
    ]
    # Python accepts the linked byte-code: its recorded mtime and size match
    source = new / "app" / "same.py"
    pyc = pathlib.Path(importlib.util.cache_from_source(str(source)))
    header = pyc.read_bytes()[8:16]
    mtime, size = struct.unpack("<II", header)
    assert (mtime, size) == (int(source.stat().st_mtime), source.stat().st_size)
    djangoapp_build.compile_sources(
        None, sys.executable, tag, [str(new / "app" / "added.py")]
    )
    assert pathlib.Path(
        importlib.util.cache_from_source(str(new / "app" / "added.py"))
    ).is_file()


# --------------------------------------------------------------------------
# pruning


def test_prune_looks_for_processes_only_when_something_goes(tmp_path, monkeypatch):
    layout = djangoapp_disk.Layout(str(tmp_path / "base"))
    for name in ("r1", "r2", "r3"):
        os.makedirs(os.path.join(layout.releases, name, "src"))
    entries = [
        {"event": "release", "id": rid, "status": "success"}
        for rid in ("r1", "r2", "r3")
    ]

    def scan(layout):
        raise AssertionError("no release was to go: no need to look at /proc")

    monkeypatch.setattr(djangoapp_disk, "releases_in_use", scan)
    deleted = []
    assert (
        djangoapp_disk.prune(layout, entries, 3, "r3", "r2", delete=deleted.extend)
        == []
    )
    assert deleted == []
    monkeypatch.setattr(djangoapp_disk, "releases_in_use", lambda layout: set())
    removed = djangoapp_disk.prune(
        layout, entries, 1, "r3", "r2", protect={"r1"}, delete=deleted.extend
    )
    assert removed == []
    removed = djangoapp_disk.prune(
        layout, entries, 1, "r3", None, delete=deleted.extend
    )
    assert removed == ["r1", "r2"]
    assert layout.on_disk() == ["r3"]
    assert [os.path.basename(p).split("-")[1] for p in deleted] == ["r1", "r2"]
    assert all(os.path.isdir(p) for p in deleted)  # deleting is the caller's


def test_prune_takes_the_shared_virtualenvs_no_release_left_links_to(tmp_path):
    layout = djangoapp_disk.Layout(str(tmp_path / "base"))
    for digest in ("aaaa", "bbbb", "cccc"):
        os.makedirs(os.path.join(layout.venvs, digest, "bin"))
    for rid, digest in (("r1", "aaaa"), ("r2", "bbbb"), ("r3", "bbbb")):
        os.makedirs(os.path.join(layout.releases, rid, "src"))
        os.symlink(f"../.venvs/{digest}", os.path.join(layout.releases, rid, "venv"))
    entries = [
        {"event": "release", "id": rid, "status": "success"}
        for rid in ("r1", "r2", "r3")
    ]
    deleted = []
    removed = djangoapp_disk.prune(
        layout, entries, 2, "r3", "r2", in_use=set(), delete=deleted.extend
    )
    assert removed == ["r1"]
    # aaaa went with r1, cccc (a build that failed) had no release; r2 and r3's
    # stays, and is no release of its own
    assert os.listdir(layout.venvs) == ["bbbb"]
    assert sorted(os.path.basename(p) for p in deleted) == [
        f".trash-r1-{os.getpid()}",
        f".trash-venv-aaaa-{os.getpid()}",
        f".trash-venv-cccc-{os.getpid()}",
    ]
    assert layout.on_disk() == ["r2", "r3"]


# --------------------------------------------------------------------------
# the environment of the app's commands


def test_app_commands_name_their_release_for_sentry(tmp_path):
    env = djangoapp_django.app_env(
        {"base_dir": str(tmp_path)},
        {"SENTRY_DSN": "https://k@sentry.example/1", "SENTRY_RELEASE": "stale"},
        "/srv/djangoapp/demo/releases/v2-1234abcd",
        "v2",
    )
    assert env["SENTRY_RELEASE"] == "v2"
    assert env["SENTRY_DSN"] == "https://k@sentry.example/1"
    assert env["PATH"].startswith("/srv/djangoapp/demo/releases/v2-1234abcd/venv/bin:")


# --------------------------------------------------------------------------
# the release lock's holder, read while the holder rewrites it


def test_a_holder_read_in_the_middle_of_a_rewrite_is_read_again(tmp_path, monkeypatch):
    path = tmp_path / ".release.lock"
    path.write_text('{"action": "release", "step": "reload"}tion": "release"}')
    pauses = []

    def holder_finishes_its_rewrite(seconds):
        pauses.append(seconds)
        path.write_text('{"action": "release", "step": "verify"}')

    monkeypatch.setattr(djangoapp_disk.time, "sleep", holder_finishes_its_rewrite)
    holder = djangoapp_disk.ReleaseLock.read_holder(str(path))
    assert holder == {"action": "release", "step": "verify"}
    assert pauses == [0.01]


def test_a_holder_that_stays_unreadable_is_shown_as_it_is(tmp_path):
    path = tmp_path / ".release.lock"
    path.write_text("not json")
    assert djangoapp_disk.ReleaseLock.read_holder(str(path)) == {"raw": "not json"}
    path.write_text("")
    assert djangoapp_disk.ReleaseLock.read_holder(str(path)) is None


# --------------------------------------------------------------------------
# a MariaDB dump that meets a table another minion is altering


class DumpingHost:
    """Runs mysqldump as told by ``answers`` (exit code, stderr), one per try; a
    try that succeeds writes a complete dump to --result-file."""

    check = djangoapp_host.Host.check

    def __init__(self, answers):
        self.answers = list(answers)
        self.tries = 0

    def run(self, argv, **kwargs):
        self.tries += 1
        retcode, stderr = self.answers.pop(0)
        if retcode == 0:
            path = next(a for a in argv if a.startswith("--result-file="))
            pathlib.Path(path.split("=", 1)[1]).write_text("-- Dump completed\n")
        return {"retcode": retcode, "stdout": "", "stderr": stderr}


DB = {
    "engine": "mysql",
    "host": "db",
    "user": "shop",
    "name": "shop",
    "password": "secret",
}
TABLE_CHANGED = "mysqldump: Error 1412: Table definition has changed, please retry"


def test_a_dump_that_met_a_table_being_altered_is_taken_again(tmp_path):
    host = DumpingHost([(3, TABLE_CHANGED), (3, TABLE_CHANGED), (0, "")])
    path = tmp_path / "shop.sql"
    djangoapp_django._dump_mysql(host, dict(DB), str(path), {}, pause=0.01)
    assert host.tries == 3
    assert path.read_text() == "-- Dump completed\n"


def test_a_dump_that_fails_otherwise_is_not_taken_again(tmp_path):
    host = DumpingHost([(2, "mysqldump: Got error: 1045: Access denied"), (0, "")])
    with pytest.raises(djangoapp_common.StepFailed) as failed:
        djangoapp_django._dump_mysql(host, dict(DB), str(tmp_path / "s.sql"), {})
    assert failed.value.step == "backup"
    assert host.tries == 1
