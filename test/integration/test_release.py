"""`djangoapp.release` and `djangoapp.rollback` on the converged host, under a
concurrent load through Nginx: no request fails, whatever happens to the release."""

import contextlib
import json
import threading
import time
from pathlib import Path

import pytest
import yaml

import testhost
from loadgen import Load
from stack import uses_tls

pytestmark = [pytest.mark.integration, pytest.mark.release]

CLIENTS = 24
RELEASE_TIMEOUT = 900
LIVE_ENVIRON = (Path(__file__).parent / "live_environ.py").read_text()
GUNICORN_CONFIG = "/etc/djangoapp/demo/gunicorn.conf.py"
APP_JSON = "/etc/djangoapp/demo/app.json"
# How long a test waits for a release it started to take the release lock.
LOCK_WAIT = 180


def new_load(demo_app) -> Load:
    """A load on the demo page through Nginx, from this machine (one use)."""
    return Load(
        testhost.HOST_IP,
        443 if uses_tls(demo_app) else 80,
        "/",
        host_header=demo_app["server_names"][0],
        clients=CLIENTS,
        tls=uses_tls(demo_app),
    )


@pytest.fixture
def page_load(demo_app):
    return new_load(demo_app)


def live_version(http_get, demo_app) -> str:
    scheme = "https" if uses_tls(demo_app) else "http"
    page = http_get(f"{scheme}://127.0.0.1/", demo_app["server_names"][0])
    assert page["status"] == 200
    return page["body"].split('<span class="version">')[1].split("<")[0]


def note_count(host) -> int:
    count = host.run(
        "runuser -u postgres -- psql -tA -d demo -c %s",
        "SELECT count(*) FROM notes_note",
    )
    assert count.rc == 0, count.stderr
    return int(count.stdout)


def lock_path(host) -> str:
    """The app's release lock, ``<base>/.release.lock``."""
    base = json.loads(host.file(APP_JSON).content_string)["base_dir"]
    return f"{base}/.release.lock"


def lock_holder(host, path) -> dict | None:
    """Who holds the release lock, as the holder wrote it into the file (None when
    it is empty: no run holds it, or the last one ended normally)."""
    result = host.run("cat %s", path)
    text = result.stdout.strip() if result.rc == 0 else ""
    return json.loads(text) if text else None


# Run in the host itself: a release with nothing to build goes from taking the lock
# to its switch in about a second, less than a few round trips of nsenter.
CATCH_HOLDER = """
import json, os, signal, sys, time
path, expected, wait = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + wait
holder = None
while time.monotonic() < deadline:
    try:
        with open(path) as lock:
            holder = json.loads(lock.read() or "null")
    except (FileNotFoundError, ValueError):
        holder = None
    if holder and all(holder.get(k) == v for k, v in expected.items()):
        os.kill(holder["pid"], signal.SIGSTOP)
        with open(path) as lock:
            print(lock.read())
        sys.exit(0)
    time.sleep(0.002)
print(json.dumps(holder))
sys.exit(3)
"""


@contextlib.contextmanager
def caught_holding_the_lock(host, path, **expected):
    """The run that holds the release lock with every field of ``expected``, stopped
    (SIGSTOP) by the host the moment it shows in the lock file, so that it keeps the
    lock in the step it was in however fast its remaining steps would be; yields
    the holder as the stopped run left it and lets it go on when the block ends."""
    caught = host.run(
        "python3 -c %s %s %s %s",
        CATCH_HOLDER,
        path,
        json.dumps(expected),
        str(LOCK_WAIT),
    )
    if caught.rc != 0:
        pytest.fail(f"no run took the lock as {expected} (last: {caught.stdout})")
    holder = json.loads(caught.stdout)
    try:
        yield holder
    finally:
        host.run("kill -CONT %s", str(holder["pid"]))


def current_release(salt_cli) -> str | None:
    return salt_cli("djangoapp.releases", "demo")["current"]


def history(salt_cli) -> list[dict]:
    return salt_cli("djangoapp.releases", "demo")["history"]


def step(data, name):
    return next(s for s in data["steps"] if s["name"] == name)


def workers_variable(host, salt_cli, name) -> dict[int, str]:
    """The variable ``name`` of each Gunicorn worker's live environment (empty when
    unset): /proc/<pid>/environ holds only what its master was started with."""
    found = {}
    for worker in salt_cli("djangoapp.status", "demo")["workers"]:
        result = host.run("python3 -c %s %s %s", LIVE_ENVIRON, str(worker["pid"]), name)
        assert result.rc == 0, result.stderr
        found[worker["pid"]] = result.stdout.strip()
    assert found
    return found


def workers_sentry_release(host, salt_cli) -> dict[int, str]:
    """SENTRY_RELEASE of each Gunicorn worker, checked against its own report."""
    found = workers_variable(host, salt_cli, "SENTRY_RELEASE")
    for worker in salt_cli("djangoapp.status", "demo")["workers"]:
        assert worker["version"] == found[worker["pid"]]
    return found


def write_config(host, text):
    """Rewrite the app's Gunicorn config in place (its owner and mode stay)."""
    result = host.run(
        "python3 -c %s %s %s",
        "import sys; open(sys.argv[1], 'w').write(sys.argv[2])",
        GUNICORN_CONFIG,
        text,
    )
    assert result.rc == 0, result.stderr


def release(salt_cli, version, **kwargs):
    result = salt_cli.run(
        "djangoapp.release",
        f"version={version}",
        "app=demo",
        timeout=RELEASE_TIMEOUT,
        **kwargs,
    )
    print(f"release {version}: exit {result.returncode}")
    if isinstance(result.data, dict):
        for step in result.data.get("steps", []):
            outcome = "ok" if step["ok"] else "FAILED"
            print(f"  {step['name']}: {step['seconds']:.2f} s {outcome}")
        print(f"  total: {result.data.get('seconds')} s")
    return result


def test_release_with_a_migration_under_load(
    converged_host,
    salt_cli,
    http_get,
    demo_app,
    page_load,
    salt_master,
    event_listener,
):
    assert live_version(http_get, demo_app) == "v1.0.0"
    started = time.time()
    with page_load:
        result = release(salt_cli, "v1.1.0")
    print(page_load.result)
    assert result.returncode == 0, result.data
    data = result.data
    assert data["result"] is True
    assert data["version"] == "v1.1.0"
    assert data["migrations_ran"] is True
    assert data["backup"] and converged_host.file(data["backup"]).exists
    assert page_load.result.failed == 0, page_load.result.failures
    assert page_load.result.succeeded > 100
    assert live_version(http_get, demo_app) == "v1.1.0"
    # the workers were handed over one by one, not replaced all at once by a HUP
    assert step(data, "reload")["method"] == "rolling", step(data, "reload")
    assert set(workers_sentry_release(converged_host, salt_cli).values()) == {"v1.1.0"}
    events = event_listener.wait_for_events(
        [
            (salt_master.id, "djangoapp/release/start"),
            (salt_master.id, "djangoapp/release/success"),
        ],
        timeout=30,
        after_time=started,
    )
    assert events.found_all_events, events.missed


def test_status_and_ledger_tell_what_runs(salt_cli):
    status = salt_cli("djangoapp.status", "demo")
    assert status["version"] == "v1.1.0"
    assert status["deployed_by"]
    assert status["service"]["running"] is True
    assert {worker["release"] for worker in status["workers"]} == {status["current"]}
    releases = salt_cli("djangoapp.releases", "demo")
    successful = [
        entry["version"]
        for entry in releases["history"]
        if entry.get("status") == "success"
    ]
    assert successful[-2:] == ["v1.0.0", "v1.1.0"]
    assert releases["previous_good"].startswith("v1.0.0-")


def test_rollback_under_load(converged_host, salt_cli, http_get, demo_app, page_load):
    with page_load:
        result = salt_cli.run("djangoapp.rollback", "app=demo", timeout=RELEASE_TIMEOUT)
    print(page_load.result)
    assert result.returncode == 0, result.data
    assert result.data["result"] is True
    assert page_load.result.failed == 0, page_load.result.failures
    assert live_version(http_get, demo_app) == "v1.0.0"
    assert step(result.data, "reload")["method"] == "rolling"
    assert set(workers_sentry_release(converged_host, salt_cli).values()) == {"v1.0.0"}


def test_code_only_release_is_fast(salt_cli, http_get, demo_app, page_load):
    with page_load:
        result = release(salt_cli, "v1.0.1")
    assert result.returncode == 0, result.data
    assert result.data["migrations_ran"] is False
    assert page_load.result.failed == 0, page_load.result.failures
    assert live_version(http_get, demo_app) == "v1.0.1"
    back = salt_cli.run("djangoapp.rollback", "app=demo", timeout=RELEASE_TIMEOUT)
    assert back.returncode == 0, back.data
    assert live_version(http_get, demo_app) == "v1.0.0"


def host_python(host) -> tuple[int, int]:
    found = host.run("python3 -c 'import sys; print(*sys.version_info[:3])'")
    assert found.rc == 0, found.stderr
    return tuple(int(part) for part in found.stdout.split())


def test_django_6_deploys_where_python_is_3_12_and_is_refused_before(
    converged_host, salt_cli, http_get, demo_app, page_load
):
    """``django6`` says ``requires-python = ">=3.12"``: Debian 13 (3.13) deploys it,
    Debian 12 (3.11) stops it at the build with the reason, the live release
    untouched."""
    python = host_python(converged_host)
    live = current_release(salt_cli)
    with page_load:
        result = release(salt_cli, "django6")
    assert page_load.result.failed == 0, page_load.result.failures
    if python >= (3, 12):
        assert result.returncode == 0, result.data
        assert live_version(http_get, demo_app) == "django6"
        django = converged_host.run(
            "/srv/djangoapp/demo/current/venv/bin/python -c "
            "'import django; print(django.VERSION[0])'"
        )
        assert django.stdout.strip() == "6", django.stderr
        with page_load:
            back = salt_cli.run(
                "djangoapp.rollback", "app=demo", timeout=RELEASE_TIMEOUT
            )
        assert back.returncode == 0, back.data
        assert page_load.result.failed == 0, page_load.result.failures
    else:
        assert result.returncode != 0
        assert result.data["failed_step"] == "build", result.data
        version = ".".join(str(part) for part in python)
        assert result.data["error"] == (
            "the project requires Python >=3.12 (pyproject.toml) and python3 is "
            f"Python {version}: set the app's python in the pillar to an "
            'interpreter that fits (a version such as "3.12" or a path)'
        ), result.data
        assert current_release(salt_cli) == live
    assert live_version(http_get, demo_app) == "v1.0.0"


def test_a_changed_gunicorn_config_is_read_with_a_hup(
    converged_host, salt_cli, http_get, demo_app, page_load
):
    """New workers forked from the running master would keep its settings: when the
    config file changed since the master read it, the release sends a HUP."""
    original = converged_host.file(GUNICORN_CONFIG).content_string
    write_config(converged_host, original + "\n# changed by test_release.py\n")
    try:
        with page_load:
            result = release(salt_cli, "v1.0.1")
        assert result.returncode == 0, result.data
        reload = step(result.data, "reload")
        assert reload["method"] == "hup", reload
        assert "config changed" in reload["reason"]
        assert page_load.result.failed == 0, page_load.result.failures
        assert live_version(http_get, demo_app) == "v1.0.1"
        assert set(workers_sentry_release(converged_host, salt_cli).values()) == {
            "v1.0.1"
        }
    finally:
        write_config(converged_host, original)
    # the master read the changed file: the original one is a change again
    with new_load(demo_app) as load:
        back = salt_cli.run("djangoapp.rollback", "app=demo", timeout=RELEASE_TIMEOUT)
    assert back.returncode == 0, back.data
    assert step(back.data, "reload")["method"] == "hup"
    assert load.result.failed == 0, load.result.failures
    assert live_version(http_get, demo_app) == "v1.0.0"
    assert set(workers_sentry_release(converged_host, salt_cli).values()) == {"v1.0.0"}


def reload_state(states) -> dict:
    return next(
        result
        for key, result in states.items()
        if "djangoapp-demo-gunicorn-reloaded" in key
    )


def test_a_changed_environment_reaches_new_workers_without_a_failed_request(
    converged_host, salt_cli, demo_app
):
    """state.apply with a new variable in the app's env: the workers are handed over
    to new ones that have it, under load, without a failed request; without it again,
    the same way back."""
    mark = "DJANGOAPP_TEST_MARK"
    override = {"djangoapp": {"apps": {"demo": {"env": {mark: "changed"}}}}}
    before = set(workers_variable(converged_host, salt_cli, mark))
    try:
        with new_load(demo_app) as load:
            changed = salt_cli("state.apply", pillar=override, timeout=900)
        reloaded = reload_state(changed)
        assert reloaded["result"] is True, reloaded
        assert reloaded["changes"]["djangoapp.reload"]["method"] == "rolling", reloaded
        assert load.result.failed == 0, load.result.failures
        live = workers_variable(converged_host, salt_cli, mark)
        assert set(live.values()) == {"changed"} and not set(live) & before
    finally:
        with new_load(demo_app) as load:
            restored = salt_cli("state.apply", timeout=900)
    assert reload_state(restored)["changes"]["djangoapp.reload"]["method"] == "rolling"
    assert load.result.failed == 0, load.result.failures
    assert set(workers_variable(converged_host, salt_cli, mark).values()) == {""}


FAILURES = {
    "unknown tag": ("v9.9.9", "resolve"),
    "missing requirement": ("bad-requirement", "build"),
    "app fails to import": ("broken-import", "preflight"),
    "failing migration": ("failing-migration", "migrate"),
    "failing collectstatic": ("failing-collectstatic", "preflight"),
    "health check fails after the switch": ("unhealthy", "health"),
}
# Versions that are no git ref at all: refused before the release starts.
REJECTED = {
    "shell metacharacters": "v1.0.0;touch /tmp/pwned",
    "command substitution": "$(touch /tmp/pwned)",
    "option injection": "--upload-pack=touch /tmp/pwned",
}


@pytest.mark.parametrize("case", list(FAILURES) + list(REJECTED))
def test_failed_release_leaves_the_old_one_serving(
    case, converged_host, salt_cli, http_get, demo_app, page_load
):
    version, failed_step = FAILURES.get(case, (REJECTED.get(case), None))
    before = note_count(converged_host)
    live = current_release(salt_cli)
    with page_load:
        result = release(salt_cli, version)
    print(page_load.result)
    assert result.returncode != 0
    if failed_step is None:
        # the module refuses the argument: no step ran; one line says why, in
        # the JSON of the return
        assert set(result.data) == {"result", "error"}, result.data
        assert result.data["result"] is False
        assert result.data["error"].startswith(
            f"version {version!r} contains characters not allowed in a ref"
        ), result.data
    else:
        assert result.data["result"] is False
        assert result.data["failed_step"] == failed_step, result.data
        assert result.data["error"]
    if case == "unknown tag":
        assert result.data["error"] == (
            f"version {version!r} is not a branch, tag or commit of the repository"
        ), result.data
        assert result.data["restored"] == [f"current unchanged ({live})"], result.data
    assert current_release(salt_cli) == live
    assert page_load.result.failed == 0, page_load.result.failures
    assert live_version(http_get, demo_app) == "v1.0.0"
    assert note_count(converged_host) == before
    assert not converged_host.file("/tmp/pwned").exists


def test_release_with_the_database_down_fails_cleanly(
    converged_host, salt_cli, http_get, demo_app
):
    converged_host.run_expect([0], "systemctl stop postgresql")
    try:
        result = release(salt_cli, "v1.1.0")
    finally:
        converged_host.run_expect([0], "systemctl start postgresql")
    assert result.returncode != 0
    assert result.data["result"] is False
    assert live_version(http_get, demo_app) == "v1.0.0"


def test_a_second_release_at_the_same_time_is_refused(
    converged_host, salt_cli, http_get, demo_app
):
    lock = lock_path(converged_host)
    live = current_release(salt_cli)
    first = {}
    runner = threading.Thread(
        target=lambda: first.update(r=release(salt_cli, "v1.0.1"))
    )
    runner.start()
    try:
        # the second one starts while the first holds the lock, paused there so
        # that it cannot finish first
        with caught_holding_the_lock(
            converged_host, lock, action="release", version="v1.0.1"
        ) as holder:
            print(f"holder: {holder}")
            second = release(salt_cli, "v1.1.0")
    finally:
        runner.join()
    assert second.returncode != 0
    assert second.data["result"] is False, second.data
    assert second.data["failed_step"] == "lock", second.data
    error = second.data["error"]
    assert error.startswith(
        "another release, rollback or reload is running for this app ("
    ), error
    for field in ("pid", "action", "version", "jid"):
        assert f"{field}={holder[field]}" in error, (field, error)
    assert second.data["restored"] == ["nothing changed"], second.data
    assert [(s["name"], s["ok"]) for s in second.data["steps"]] == [("lock", False)]
    assert second.data["id"] is None and second.data["sha"] is None, second.data
    # the first one, the lock's holder, went through and is live
    done = first["r"]
    assert done.returncode == 0, done.data
    assert done.data["result"] is True, done.data
    assert done.data["version"] == "v1.0.1"
    assert done.data["previous"]["id"] == live, done.data
    assert current_release(salt_cli) == done.data["id"]
    assert live_version(http_get, demo_app) == "v1.0.1"
    entries = [e for e in history(salt_cli) if e.get("jid") == holder["jid"]]
    assert [(e["status"], e["id"]) for e in entries] == [
        ("success", done.data["id"])
    ], entries
    assert lock_holder(converged_host, lock) is None


def test_a_killed_release_does_not_block_the_next(
    converged_host, salt_cli, http_get, demo_app, page_load
):
    lock = lock_path(converged_host)
    live = current_release(salt_cli)
    started = salt_cli.run("djangoapp.release", "version=v1.1.0", "app=demo", "--async")
    jid = started.stdout.split()[-1]
    # caught holding the lock, before the switch, and killed there
    with caught_holding_the_lock(converged_host, lock, jid=jid) as holder:
        print(f"holder: {holder}")
        assert (holder["action"], holder["version"]) == ("release", "v1.1.0")
        killed = salt_cli("saltutil.kill_job", jid)
    assert killed == f"Signal 9 sent to job {jid} at pid {holder['pid']}", killed
    # it did not finish: it never let go of the lock (a run that ends empties the
    # file), never switched and recorded nothing
    assert lock_holder(converged_host, lock) == holder
    assert current_release(salt_cli) == live
    assert not [e for e in history(salt_cli) if e.get("jid") == jid]
    with page_load:
        result = release(salt_cli, "v1.1.0")
    print(page_load.result)
    assert result.returncode == 0, result.data
    assert result.data["result"] is True, result.data
    takeover = (
        f"took over from a release that did not finish (pid {holder['pid']}, "
        f"version v1.1.0, started {holder['started']}, in step {holder['step']})"
    )
    assert takeover in result.data["notes"], result.data["notes"]
    recovered = result.data["recovered"]
    assert (recovered["pid"], recovered["step"]) == (holder["pid"], holder["step"])
    assert result.data["previous"]["id"] == live, result.data
    assert current_release(salt_cli) == result.data["id"]
    assert page_load.result.failed == 0, page_load.result.failures
    assert live_version(http_get, demo_app) == "v1.1.0"
    assert lock_holder(converged_host, lock) is None


@contextlib.contextmanager
def pillar_override(salt_cli, pillar_dir: Path, demo: dict):
    """The demo app's pillar with ``demo`` over it, for the block."""
    top = pillar_dir / "top.sls"
    original = top.read_text()
    (pillar_dir / "override.sls").write_text(
        json.dumps({"djangoapp": {"apps": {"demo": demo}}})
    )
    targets = yaml.safe_load(original)
    targets["base"]["*"].append("override")
    top.write_text(yaml.safe_dump(targets))
    assert salt_cli("saltutil.refresh_pillar", "wait=True") is True
    try:
        yield
    finally:
        top.write_text(original)
        (pillar_dir / "override.sls").unlink()
        assert salt_cli("saltutil.refresh_pillar", "wait=True") is True


def release_state(salt_cli, *args) -> dict:
    states = salt_cli("state.apply", *args, timeout=RELEASE_TIMEOUT)
    assert isinstance(states, dict), states
    return next(
        state for key, state in states.items() if "-demo-release-deployed_" in key
    )


def test_state_apply_keeps_a_hand_release_until_the_pillar_changes(
    salt_cli, http_get, demo_app, salt_pillar_roots
):
    """The tests above left v1.1.0 live by hand; the pillar says v1.0.0 and
    state.apply last released it."""
    assert live_version(http_get, demo_app) == "v1.1.0"
    kept = current_release(salt_cli)
    for args in (("test=True",), ()):
        state = release_state(salt_cli, *args)
        assert state["result"] is True and state["changes"] == {}, state
        assert state["comment"].startswith("v1.1.0 is live, release by "), state
        assert state["comment"].endswith(
            "the pillar's version v1.0.0 has not changed since state.apply released "
            "it, so the release stays (version_policy: pillar would put v1.0.0 back)"
        ), state
    assert current_release(salt_cli) == kept

    pillar_dir = Path(salt_pillar_roots[0])
    with pillar_override(salt_cli, pillar_dir, {"version_policy": "pillar"}):
        planned = release_state(salt_cli, "test=True")
        assert planned["result"] is None, planned
        assert planned["changes"]["release"]["old"] == kept, planned
        assert release_state(salt_cli)["changes"]["release"]["old"] == kept
        assert live_version(http_get, demo_app) == "v1.0.0"
        hand = release(salt_cli, "v1.0.1")
        assert hand.data["warnings"] == [
            "the pillar names v1.0.0: the next state.apply releases v1.0.0 again"
        ], hand.data
        release_state(salt_cli)
        assert live_version(http_get, demo_app) == "v1.0.0"

    with pillar_override(salt_cli, pillar_dir, {"version": "v1.0.1"}):
        planned = release_state(salt_cli, "test=True")
        assert planned["result"] is None, planned
        release_state(salt_cli)
        assert live_version(http_get, demo_app) == "v1.0.1"
    # the pillar's version is v1.0.0 again: a change, so it is released
    release_state(salt_cli)
    assert live_version(http_get, demo_app) == "v1.0.0"
