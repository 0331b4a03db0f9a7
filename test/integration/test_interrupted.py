"""A release stopped at each of its steps, under load, on a host of its own (one app,
`shop`, on PostgreSQL under Supervisor): killed with SIGKILL at the step's start (the
lock file changes: the test wakes on inotify) or a moment into it, or stopped by
SIGTERM. Then the same release again, as an operator would run it.

What must hold each time: no request fails, the killed run leaves its lock file saying
where it stopped (`djangoapp.status` shows it), and the next release puts right what it
left: the release live before it is live again where the killed run had switched, its
release and unfinished dump are gone, the ledger records it as interrupted; that next
release then succeeds, with every worker on it, as many as the config gives, at the
master's priority.

The cases run in file order, each from where the one before left the host. The slot
is $DJANGOAPP_INTERRUPTED_SLOT, by default the shared host's slot plus 66.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from secondhost import SecondHost, bootable_testhost, converged_second_host, slot_from
from test_combinations import postgresql_app_pillar

import demorepo
from loadgen import Load

pytestmark = pytest.mark.integration

HOSTNAME = "djangoapp-test-interrupted"
APP = "shop"
BASE = f"/srv/djangoapp/{APP}"
CLIENTS = 6

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
    if name.isdigit() and int(stat(name)[1]) == master:
        cwd = os.readlink(f"/proc/{name}/cwd")
        release = cwd[len(releases):].split("/")[0] if cwd.startswith(releases) else cwd
        nice = int(stat(name)[16])
        workers.append({"pid": int(name), "release": release, "nice": nice})
print(json.dumps({"master": master, "nice": int(stat(master)[16]), "workers": workers}))
"""


@pytest.fixture(scope="module")
def stopped_host(tmp_path_factory):
    module = bootable_testhost(slot_from("DJANGOAPP_INTERRUPTED_SLOT", 66))
    work = tmp_path_factory.mktemp("interrupted")
    demorepo.build_repo(work / "git" / "demo.git")
    pillar = postgresql_app_pillar(module, APP, "shop-db-9e41")
    with converged_second_host(module, work, HOSTNAME, pillar) as host:
        yield host.converged()


@pytest.fixture(scope="module")
def configured_workers(stopped_host) -> int:
    return len(workers(stopped_host)["workers"])


def workers(host: SecondHost) -> dict:
    result = host.host.exec(
        ["python3", "-c", WORKERS, f"/run/djangoapp/{APP}", f"{BASE}/releases"]
    )
    return json.loads(result.stdout)


def live_id(host: SecondHost) -> str:
    return host.host.exec(["readlink", f"{BASE}/current"]).stdout.strip().split("/")[-1]


def ledger(host: SecondHost) -> list[dict]:
    text = host.host.exec(["cat", f"{BASE}/ledger.jsonl"]).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stopped_release(host: SecondHost, version: str, step: str, delay: float, signame):
    """Release ``version`` and stop it ``delay`` seconds into ``step``; returns what
    the stopper saw and the run's own output (none when it was killed)."""
    stopper = subprocess.Popen(
        host.host.nsenter_command(
            [
                "python3",
                "-c",
                STOPPER,
                f"{BASE}/.release.lock",
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
        run = host.salt_call("djangoapp.release", f"version={version}", f"app={APP}")
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
# Where the killed run had already switched, and not yet recorded its success.
SWITCHED = ("reload", "verify", "health")


@pytest.mark.parametrize(
    ("step", "delay", "signame", "version"),
    CASES,
    ids=[f"{step}+{delay}s-{signame}" for step, delay, signame, _ in CASES],
)
def test_a_release_stopped_in_a_step_leaves_nothing_half_done(
    stopped_host, configured_workers, step, delay, signame, version
):
    host = stopped_host
    before = live_id(host)
    released_before = {e["id"] for e in ledger(host) if e.get("status") == "success"}
    with Load(host.ip, 80, "/", f"{APP}.test", clients=CLIENTS) as load:
        seen, run = stopped_release(host, version, step, delay, signame)
        rc, status, output = host.salt("djangoapp.status", f"app={APP}")
        assert rc == 0, output
        rc, again, output = host.salt(
            "djangoapp.release", f"version={version}", f"app={APP}"
        )
    print(f"stopped in {step} (+{delay}s, {signame}), then again: {load.result}")
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
    entries = ledger(host)

    if signame == "SIGTERM":
        # it put back what was live itself, and said so
        stopped = json.loads(run.stdout)["local"]
        assert stopped["failed_step"] == step
        assert stopped["error"] == f"stopped by SIGTERM during {step}"
        print("  stopped run:", json.dumps({"restored": stopped["restored"]}))
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
    assert live_id(host) == again["id"]
    now = workers(host)
    assert {w["release"] for w in now["workers"]} == {again["id"]}
    assert len(now["workers"]) == configured_workers
    assert {w["nice"] for w in now["workers"]} == {now["nice"]}
    assert host.host.exec(["cat", f"{BASE}/.release.lock"]).stdout == ""
    partial = host.host.exec(
        ["find", f"/var/backups/djangoapp/{APP}", "-name", "*.partial"], check=False
    )
    assert partial.stdout == ""
