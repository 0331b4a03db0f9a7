"""`djangoapp.release` and `djangoapp.rollback` on the converged host, under a
concurrent load through Nginx: no request fails, whatever happens to the release."""

import threading
import time
from pathlib import Path

import pytest

import testhost
from loadgen import Load
from stack import uses_tls

pytestmark = [pytest.mark.integration, pytest.mark.release]

CLIENTS = 24
RELEASE_TIMEOUT = 900
LIVE_ENVIRON = (Path(__file__).parent / "live_environ.py").read_text()
GUNICORN_CONFIG = "/etc/djangoapp/demo/gunicorn.conf.py"


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
    "unknown tag": ("v9.9.9", None),
    "shell metacharacters": ("v1.0.0;touch /tmp/pwned", None),
    "command substitution": ("$(touch /tmp/pwned)", None),
    "option injection": ("--upload-pack=touch /tmp/pwned", None),
    "missing requirement": ("bad-requirement", "build"),
    "app fails to import": ("broken-import", "preflight"),
    "failing migration": ("failing-migration", "migrate"),
    "failing collectstatic": ("failing-collectstatic", "preflight"),
    "health check fails after the switch": ("unhealthy", "health"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_release_leaves_the_old_one_serving(
    case, converged_host, salt_cli, http_get, demo_app, page_load
):
    version, failed_step = FAILURES[case]
    before = note_count(converged_host)
    with page_load:
        result = release(salt_cli, version)
    print(page_load.result)
    assert result.returncode != 0
    if failed_step is None:
        assert "version" in str(result.data)
    else:
        assert result.data["result"] is False
        assert result.data["failed_step"] == failed_step, result.data
        assert result.data["error"]
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


def test_a_second_release_at_the_same_time_is_refused(salt_cli, http_get, demo_app):
    first = {}
    runner = threading.Thread(
        target=lambda: first.update(r=release(salt_cli, "v1.0.1"))
    )
    runner.start()
    time.sleep(1.0)
    second = release(salt_cli, "v1.1.0")
    runner.join()
    assert second.returncode != 0
    assert (
        "lock" in str(second.data).lower() or "in progress" in str(second.data).lower()
    )
    assert first["r"].returncode == 0, first["r"].data
    assert live_version(http_get, demo_app) == "v1.0.1"


def test_a_killed_release_does_not_block_the_next(
    converged_host, salt_cli, http_get, demo_app, page_load
):
    started = salt_cli.run("djangoapp.release", "version=v1.1.0", "app=demo", "--async")
    jid = started.stdout.split()[-1]
    time.sleep(2.0)
    salt_cli.run("saltutil.kill_job", jid)
    with page_load:
        result = release(salt_cli, "v1.1.0")
    assert result.returncode == 0, result.data
    assert page_load.result.failed == 0, page_load.result.failures
    assert live_version(http_get, demo_app) == "v1.1.0"
