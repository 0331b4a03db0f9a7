"""
Reload, verification, health check and automatic restore, with real releases
of the tiny project and a stand-in for the process manager: a
``supervisorctl`` script on PATH that reports the pid of a small master
process and forwards signals to it. Like gunicorn, the master answers HUP by
changing into ``current/src`` (so into the new release), starting new
workers there and stopping the old ones. The health URL is served by a
local HTTP server whose answer the tests choose.

The tests run in file order and share one app.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import djangoapp_health
import pytest
from salt.exceptions import CommandExecutionError
from standins import Health

MASTER = r"""
import os, signal, subprocess, sys, time
current_src = sys.argv[1]
workers = []

def spawn():
    os.chdir(current_src)
    return [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            for _ in range(2)]

def hup(signum, frame):
    global workers
    old, workers = workers, spawn()
    for proc in old:
        proc.terminate()
        proc.wait()

def term(signum, frame):
    for proc in workers:
        proc.kill()
    sys.exit(0)

signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, term)
workers = spawn()
print("ready", flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("verifybase") / "srv"


@pytest.fixture
def app(tiny_app, base, health_server, fake_pm, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_pm}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MASTER_PIDFILE", str(fake_pm / "master.pid"))
    url = f"http://127.0.0.1:{health_server.server_address[1]}/healthz/"
    return tiny_app(
        "verified",
        base,
        health={"url": url, "host": "example.com", "timeout": 5, "verify_tls": False},
        graceful_timeout=5,
    )


@pytest.fixture(scope="module")
def master(base, fake_pm):
    procs = []

    def start():
        env = dict(os.environ, PWD=str(base / "current" / "src"))
        proc = subprocess.Popen(
            [sys.executable, "-c", MASTER, str(base / "current" / "src")],
            cwd=str(base / "current" / "src"),
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        (fake_pm / "master.pid").write_text(str(proc.pid))
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def _ledger(base):
    path = pathlib.Path(base) / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _names(ret):
    return [s["name"] for s in ret["steps"]]


def test_first_release_then_service_starts(mods, app, base, master):
    ret = mods["djangoapp.release"]("v1.0.0", app="verified")
    assert ret["result"] is True, ret
    assert ret["service_running"] is False
    assert "reload" not in _names(ret)
    master()
    st = mods["djangoapp.status"]("verified")
    assert st["service"]["running"] is True
    assert {w["release"] for w in st["workers"]} == {ret["id"]}
    assert st["service"]["master_release"] == ret["id"]


def test_release_reloads_and_verifies(mods, app, base):
    ret = mods["djangoapp.release"]("v1.1.0", app="verified")
    assert ret["result"] is True, ret
    assert _names(ret)[-4:] == ["reload", "verify", "health", "prune"]
    verify = next(s for s in ret["steps"] if s["name"] == "verify")
    assert len(verify["workers"]) == 2
    st = mods["djangoapp.status"]("verified")
    assert {w["release"] for w in st["workers"]} == {ret["id"]}
    assert sorted(w["pid"] for w in st["workers"]) == sorted(verify["workers"])


def test_unhealthy_release_is_rolled_back(mods, app, base, health_server):
    before = os.readlink(base / "current").split("/")[-1]
    Health.status["code"] = 500
    try:
        ret = mods["djangoapp.release"]("v1.2.0", app="verified")
    finally:
        Health.status["code"] = 200
    assert ret["result"] is False
    assert ret["failed_step"] == "health"
    assert "HTTP 500" in ret["error"]
    assert ret["restored"][0] == f"current -> releases/{before}"
    # this test's Gunicorn runs without the formula's hooks
    assert ret["restored"][1] == (
        "sent HUP to gunicorn: the master has not recorded what it loaded "
        "(started before the hooks)"
    )
    assert any(r.startswith(f"workers back on {before}") for r in ret["restored"])
    assert os.readlink(base / "current") == f"releases/{before}"
    assert not (base / "releases" / ret["id"]).exists()
    last = _ledger(base)[-1]
    assert last["status"] == "rolled_back" and last["failed_step"] == "health"
    # the migration of v1.2.0 ran before the switch; it is reported
    assert ret["migrations_ran"] is True
    st = mods["djangoapp.status"]("verified")
    assert {w["release"] for w in st["workers"]} == {before}


def test_rollback_reloads_and_verifies(mods, app, base):
    ret = mods["djangoapp.rollback"]("verified")
    assert ret["result"] is True, ret
    assert ret["version"] == "v1.0.0"
    assert _names(ret) == ["lock", "select", "switch", "reload", "verify", "health"]
    st = mods["djangoapp.status"]("verified")
    assert st["current"] == ret["id"]
    assert {w["release"] for w in st["workers"]} == {ret["id"]}


def test_reload_without_the_hooks_sends_hup_and_waits_for_new_workers(mods, app, base):
    before = {w["pid"] for w in mods["djangoapp.status"]("verified")["workers"]}
    ret = mods["djangoapp.reload"]("verified")
    assert ret["result"] is True, ret
    assert ret["method"] == "hup"
    assert "has not recorded what it loaded" in ret["reason"]
    # returned once every worker was a new one
    assert ret["workers"] and not set(ret["workers"]) & before
    after = {w["pid"] for w in mods["djangoapp.status"]("verified")["workers"]}
    assert after == set(ret["workers"])


def test_health_check_takes_a_redirect_without_following_it(health_server):
    url = f"http://127.0.0.1:{health_server.server_address[1]}/"
    health = {"url": url, "host": "example.com"}
    Health.status["code"] = 302
    try:
        answer = djangoapp_health.health_check(health, tries=1)
        assert answer == "HTTP 302 -> /accounts/login/?next=/"
        only_success = dict(health, accept=["2xx"])
        with pytest.raises(CommandExecutionError) as refused:
            djangoapp_health.health_check(only_success, tries=2, delay=0.01)
        assert str(refused.value) == (
            "GET / (Host example.com, http through Nginx) answered "
            "HTTP 302 -> /accounts/login/?next=/; healthy is 2xx"
        )
        assert djangoapp_health.health_check(dict(health, accept=[302])) == answer
    finally:
        Health.status["code"] = 200
    assert djangoapp_health.health_check(health) == "HTTP 200"
    Health.status["code"] = 503
    try:
        with pytest.raises(CommandExecutionError, match="answered HTTP 503;"):
            djangoapp_health.health_check(health, tries=1)
    finally:
        Health.status["code"] = 200
    with pytest.raises(CommandExecutionError, match="HTTP 400"):
        djangoapp_health.health_check({"url": url, "host": "other.example"}, tries=1)


def test_the_health_function_judges_as_a_release_does(mods, make_app, health_server):
    url = f"http://127.0.0.1:{health_server.server_address[1]}/health/"
    make_app("judged", health={"url": url, "host": "example.com", "accept": ["2xx"]})
    assert mods["djangoapp.health"]("judged") == {
        "result": True,
        "response": "HTTP 200",
    }
    Health.status["code"] = 302
    try:
        with pytest.raises(CommandExecutionError) as refused:
            mods["djangoapp.health"]("judged")
    finally:
        Health.status["code"] = 200
    assert str(refused.value) == (
        "GET /health/ (Host example.com, http through Nginx) answered HTTP 302 -> "
        "/accounts/login/?next=/; healthy is 2xx (the pillar's "
        "djangoapp:apps:judged:health_path and djangoapp:apps:judged:health_statuses "
        "say where and what)"
    )
