"""A release stopped at each of its steps, under load, on a host of its own (`shop`,
on PostgreSQL under Supervisor): killed with SIGKILL at the step's start (the lock
file changes: the test wakes on inotify) or a moment into it, or stopped by SIGTERM.
Then the same release again, as an operator would run it. The same for the steps of
the hand-over of a second app, `kiosk`, with `preload_app` under systemd (a
gunicorn-keeper in Gunicorn's place, a new master per hand-over).

What must hold each time: no request fails, the killed run leaves its lock file saying
where it stopped (`djangoapp.status` shows it), and the next release puts right what it
left: the release live before it is live again where the killed run had switched, its
release and unfinished dump are gone, the ledger records it as interrupted; that next
release then succeeds, with every worker on it, as many as the config gives, at the
master's priority (for kiosk: the keeper and what it runs but its standby at its
process manager's, one master serving).

The cases run in file order, each from where the one before left the host. The slot
is $DJANGOAPP_INTERRUPTED_SLOT, by default the shared host's slot plus 66.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from secondhost import SecondHost, bootable_testhost, converged_second_host, slot_from
from test_combinations import app_pillar, postgresql_app_pillar

import demorepo
from loadgen import Load

pytestmark = pytest.mark.integration

HOSTNAME = "djangoapp-test-interrupted"
APP = "shop"
PRELOADED_APP = "kiosk"
CLIENTS = 6
# The old master of a preloaded hand-over ends once its workers have finished their
# requests (Gunicorn's graceful_timeout is longer, but these are quick).
OLD_MASTER_EXIT_TIMEOUT = 30


def base_dir(app: str) -> str:
    return f"/srv/djangoapp/{app}"


# Waits for the step named in argv to start (the lock file is written at the start of
# each step), waits argv[3] seconds more, sends the signal to the run and prints what
# the lock file said when it did and once the run was gone.
STOPPER = r"""
import ctypes, json, os, select, signal, sys, time
lock, step, delay, signame = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
IN_MODIFY, IN_CREATE = 0x2, 0x100
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
if fd < 0 or libc.inotify_add_watch(fd, lock.encode(), IN_MODIFY) < 0:
    sys.exit(f"inotify: errno {ctypes.get_errno()}")

def holder():
    # The run rewrites its lock in place: a read that met a write half done is
    # read again.
    for _ in range(50):
        with open(lock) as handle:
            text = handle.read()
        try:
            return json.loads(text or "null")
        except ValueError:
            time.sleep(0.001)
    return json.loads(text)

print("ready", flush=True)
deadline = time.monotonic() + 300
seen = holder()
started = False
while not (seen and seen.get("step") == step):
    if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        sys.exit(f"step {step} never started")
    os.read(fd, 65536)
    seen = holder()
    started = started or bool(seen)
    if started and not seen:
        sys.exit(f"the run ended before step {step} was seen")
if step == "build":
    # the release's directory made: the build has begun, with something to undo
    made = os.path.join(os.path.dirname(lock), "releases", seen["rid"])
    if libc.inotify_add_watch(fd, os.path.dirname(made).encode(), IN_CREATE) < 0:
        sys.exit(f"inotify: errno {ctypes.get_errno()}")
    while not os.path.isdir(made):
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            sys.exit(f"{made} never appeared")
        os.read(fd, 65536)
time.sleep(delay)
at_signal = holder()
os.kill(seen["pid"], getattr(signal, signame))
while os.path.exists(f"/proc/{seen['pid']}"):
    time.sleep(0.01)
print(json.dumps({"at_signal": at_signal, "after": holder()}), flush=True)
"""

# The app's Gunicorn master (from its pidfile), and each of its workers: the release
# it runs from and its niceness.
WORKERS = r"""
import json, os, sys
run_dir, releases = sys.argv[1], sys.argv[2] + "/"
with open(os.path.join(run_dir, "gunicorn.pid")) as pidfile:
    master = int(pidfile.read())

def stat(pid):
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()

workers = []
for name in os.listdir("/proc"):
    try:  # a process may end while the list is read
        if name.isdigit() and int(stat(name)[1]) == master:
            cwd = os.readlink(f"/proc/{name}/cwd")
            inside = cwd.startswith(releases)
            release = cwd[len(releases):].split("/")[0] if inside else cwd
            nice = int(stat(name)[16])
            workers.append({"pid": int(name), "release": release, "nice": nice})
    except FileNotFoundError:
        continue
print(json.dumps({"master": master, "nice": int(stat(master)[16]), "workers": workers}))
"""

# gunicorn-keeper (keeper.json) and its process manager: their niceness, and the
# masters it runs, each with its workers' niceness.
KEEPER = r"""
import json, os, sys
with open(os.path.join(sys.argv[1], "keeper.json")) as handle:
    state = json.load(handle)

def stat(pid):
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()

def children(parent):
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(stat(name)[1]) == parent:
                found.append(int(name))
        except OSError:
            pass
    return sorted(found)

keeper = state["pid"]
masters = {
    str(master): {
        "nice": int(stat(master)[16]),
        "workers": [int(stat(worker)[16]) for worker in children(master)],
    }
    for master in children(keeper)
}
print(json.dumps({
    "state": state,
    "nice": int(stat(keeper)[16]),
    "manager_nice": int(stat(stat(keeper)[1])[16]),
    "masters": masters,
}))
"""


@pytest.fixture(scope="module")
def stopped_host(tmp_path_factory):
    module = bootable_testhost(slot_from("DJANGOAPP_INTERRUPTED_SLOT", 66))
    work = tmp_path_factory.mktemp("interrupted")
    demorepo.build_repo(work / "git" / "demo.git")
    pillar = postgresql_app_pillar(module, APP, "shop-db-9e41")
    pillar["djangoapp"]["apps"][PRELOADED_APP] = app_pillar(
        PRELOADED_APP,
        wsgi="demosite.wsgi:application",
        database={"engine": "postgresql", "password": "kiosk-db-51d3"},
        process_manager="systemd",
        preload_app=True,
    )
    with converged_second_host(module, work, HOSTNAME, pillar) as host:
        yield host.converged()


@pytest.fixture(scope="module")
def configured_workers(stopped_host) -> dict[str, int]:
    return {
        app: len(workers(stopped_host, app)["workers"]) for app in (APP, PRELOADED_APP)
    }


def workers(host: SecondHost, app: str) -> dict:
    base = base_dir(app)
    result = host.host.exec(
        ["python3", "-c", WORKERS, f"/run/djangoapp/{app}", f"{base}/releases"]
    )
    return json.loads(result.stdout)


def keeper(host: SecondHost, app: str) -> dict:
    result = host.host.exec(["python3", "-c", KEEPER, f"/run/djangoapp/{app}"])
    return json.loads(result.stdout)


def live_id(host: SecondHost, app: str) -> str:
    link = host.host.exec(["readlink", f"{base_dir(app)}/current"]).stdout
    return link.strip().split("/")[-1]


def ledger(host: SecondHost, app: str) -> list[dict]:
    text = host.host.exec(["cat", f"{base_dir(app)}/ledger.jsonl"]).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stopped_release(
    host: SecondHost, app: str, version: str, step: str, delay: float, signame
):
    """Release ``version`` of ``app`` and stop it ``delay`` seconds into ``step``;
    returns what the stopper saw and the run's own output (none when it was
    killed)."""
    stopper = subprocess.Popen(
        host.host.nsenter_command(
            [
                "python3",
                "-c",
                STOPPER,
                f"{base_dir(app)}/.release.lock",
                step,
                str(delay),
                signame,
            ]
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert stopper.stdout.readline().strip() == "ready"
        run = host.salt_call("djangoapp.release", f"version={version}", f"app={app}")
        out, err = stopper.communicate(timeout=60)
    finally:
        if stopper.poll() is None:
            stopper.kill()
            stopper.wait()
    assert stopper.returncode == 0, err
    return json.loads(out), run


# (step, seconds into it, signal, version, the next release after it)
CASES = [
    # a build whose requirements did not change shares the live virtualenv and
    # takes some 20 ms: stopped as soon as its release directory is made
    ("build", 0.0, "SIGKILL", "v1.0.1"),
    ("preflight", 0.2, "SIGKILL", "v1.0.0"),
    ("reload", 0.0, "SIGKILL", "v1.0.1"),
    ("reload", 0.3, "SIGKILL", "v1.0.0"),
    ("verify", 0.0, "SIGKILL", "v1.0.1"),
    ("health", 0.0, "SIGKILL", "v1.0.0"),
    ("reload", 0.3, "SIGTERM", "v1.0.1"),
    ("backup", 0.1, "SIGKILL", "v1.1.0"),
    # the migrations run in the preflight's process, Django set up already: some
    # 0.2 s under load, most of it the two migrations
    ("migrate", 0.05, "SIGKILL", "v1.2.0"),
]
# The preloaded hand-over: the keeper, told by SIGHUP, has the standby that imported
# the new release (and ran its checks) during the preflight fork its workers, and
# stops the old master once they are ready, some 0.04-0.07 s under load; it goes on
# by itself when the run that asked for it is killed.
PRELOADED_CASES = [
    ("reload", 0.0, "SIGKILL", "v1.0.1"),
    ("reload", 0.01, "SIGKILL", "v1.0.0"),
    ("verify", 0.0, "SIGKILL", "v1.0.1"),
    ("reload", 0.01, "SIGTERM", "v1.0.0"),
]
# Where the killed run had already switched, and not yet recorded its success.
SWITCHED = ("reload", "verify", "health")


def case_ids(cases):
    return [f"{step}+{delay}s-{signame}" for step, delay, signame, _ in cases]


@pytest.mark.parametrize(
    ("step", "delay", "signame", "version"), CASES, ids=case_ids(CASES)
)
def test_a_release_stopped_in_a_step_leaves_nothing_half_done(
    stopped_host, configured_workers, step, delay, signame, version
):
    stop_and_release_again(
        stopped_host, APP, configured_workers[APP], step, delay, signame, version
    )


@pytest.mark.parametrize(
    ("step", "delay", "signame", "version"),
    PRELOADED_CASES,
    ids=case_ids(PRELOADED_CASES),
)
def test_a_preloaded_hand_over_stopped_midway_leaves_one_master_at_its_priority(
    stopped_host, configured_workers, step, delay, signame, version
):
    host = stopped_host
    stop_and_release_again(
        host,
        PRELOADED_APP,
        configured_workers[PRELOADED_APP],
        step,
        delay,
        signame,
        version,
    )
    master = workers(host, PRELOADED_APP)["master"]
    # the old master stops once the new one is ready, its workers finishing
    # their requests: until then the keeper has both
    deadline = time.monotonic() + OLD_MASTER_EXIT_TIMEOUT
    while True:
        found = keeper(host, PRELOADED_APP)
        standby = found["state"]["standby"]
        serving = {int(p): m for p, m in found["masters"].items() if int(p) != standby}
        if list(serving) == [master] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print("  keeper:", json.dumps(found))
    state = found["state"]
    assert state["starting"] is None
    assert state["live"] == master
    assert state["last"]["result"] == "ready"
    assert state["last"]["master"] == master
    # one master serves, the pidfile's; the keeper, it and its workers at the
    # niceness of the keeper's process manager: none left boosted or held back
    assert list(serving) == [master]
    assert found["nice"] == found["manager_nice"]
    assert serving[master]["nice"] == found["manager_nice"]
    assert set(serving[master]["workers"]) == {found["manager_nice"]}


def stop_and_release_again(host, app, configured, step, delay, signame, version):
    """Release ``version`` of ``app``, stop it in ``step``, release it again under
    load; then nothing of the stopped run is left half-done."""
    before = live_id(host, app)
    entries = ledger(host, app)
    released_before = {e["id"] for e in entries if e.get("status") == "success"}
    with Load(host.ip, 80, "/", f"{app}.test", clients=CLIENTS) as load:
        seen, run = stopped_release(host, app, version, step, delay, signame)
        rc, status, output = host.salt("djangoapp.status", f"app={app}")
        assert rc == 0, output
        rc, again, output = host.salt(
            "djangoapp.release", f"version={version}", f"app={app}"
        )
    print(f"{app} stopped in {step} (+{delay}s, {signame}), then again: {load.result}")
    print(
        "  next release:",
        json.dumps(
            {
                "recovered": again.get("recovered"),
                "seconds": again["seconds"],
                "steps": {s["name"]: s["seconds"] for s in again["steps"]},
            }
        ),
    )
    assert load.result.failed == 0, load.result.failures
    assert load.result.succeeded > 0

    # the run was stopped in that very step
    assert seen["at_signal"]["step"] == step
    assert status["release_running"] is None
    assert rc == 0, output
    assert again["result"] is True, output
    assert again["version"] == version
    entries = ledger(host, app)

    if signame == "SIGTERM":
        # it put back what was live itself, and said so
        stopped = json.loads(run.stdout)["local"]
        assert stopped["failed_step"] == step
        assert stopped["error"] == f"stopped by SIGTERM during {step}"
        steps = {s["name"]: s["seconds"] for s in stopped["steps"]}
        print(
            "  stopped run:",
            json.dumps(
                {
                    "restored": stopped["restored"],
                    "notes": stopped["notes"],
                    "seconds": stopped["seconds"],
                    "steps": steps,
                }
            ),
        )
        assert stopped["restored"][0] == f"current -> releases/{before}"
        assert stopped["restored"][-1].startswith(f"workers back on {before}: [")
        incomplete = [r for r in stopped["restored"] if r.startswith("restore inc")]
        assert incomplete == []
        assert seen["after"] is None
        assert status["release_stopped"] is None
        assert status["current"] == before
        assert "recovered" not in again
        assert [e["status"] for e in entries[-2:]] == ["rolled_back", "success"]
    else:
        stopped = seen["after"]
        assert status["release_stopped"] == stopped
        assert stopped["step"] == step
        assert stopped["previous"] == before
        recovered = again["recovered"]
        assert recovered["step"] == step
        assert recovered["version"] == version
        assert recovered["pid"] == stopped["pid"]
        interrupted = [e for e in entries if e.get("status") == "interrupted"][-1]
        assert interrupted["started"] == stopped["started"]
        assert interrupted["failed_step"] == step
        assert interrupted["id"] == stopped["rid"]
        assert interrupted["recovered"] == [
            line
            for line in recovered["done"]
            if line != "nothing was left to put right"
        ]
        if step in SWITCHED:
            # it had switched: the release live before it was put back first
            assert status["current"] == stopped["rid"]
            assert recovered["put_back"] == before
            assert f"current -> releases/{before}" in recovered["done"]
        else:
            assert recovered["put_back"] is None
        removed = f"removed its release {stopped['rid']}"
        if stopped["rid"] in released_before:
            # it was taking up a release that had succeeded before: kept
            assert removed not in recovered["done"]
        else:
            assert removed in recovered["done"]

    # nothing half-done: one release live, every worker on it, as many as
    # configured, at the master's niceness; the lock free; no unfinished dump
    assert live_id(host, app) == again["id"]
    now = workers(host, app)
    assert {w["release"] for w in now["workers"]} == {again["id"]}
    assert len(now["workers"]) == configured
    assert {w["nice"] for w in now["workers"]} == {now["nice"]}
    assert host.host.exec(["cat", f"{base_dir(app)}/.release.lock"]).stdout == ""
    partial = host.host.exec(
        ["find", f"/var/backups/djangoapp/{app}", "-name", "*.partial"], check=False
    )
    assert partial.stdout == ""
