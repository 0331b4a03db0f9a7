"""Faults a server meets over months, on a host of its own with two apps on
PostgreSQL (shop under Supervisor, blog under systemd; wiki and news the same with
`preload_app`, a gunicorn-keeper in Gunicorn's place), each under load: Gunicorn's
master killed with SIGKILL, PostgreSQL restarted, the host powered off and booted
again. After each, the site serves by itself and the next release has no failed
request. The host runs with the firewall, fail2ban and the monitoring agents (NRPE,
the Zabbix agent, snmpd) on, which a power cycle must bring back too.

The tests run in file order, each from where the one before left the host, and print
their figures (docs/reliability.md). The slot is $DJANGOAPP_FAULTS_SLOT, by default
the shared host's slot plus 64.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest
from secondhost import SecondHost, bootable_testhost, converged_second_host, slot_from
from test_combinations import app_pillar
from test_monitoring_agents import SYS_DESCR, check_nrpe, snmpget, zabbix_get

import demorepo
from loadgen import Load
from nspawn_backend import nspawn_host
from stack import HTTP_PROBE, SNMP_COMMUNITY, changed_states, failed_states

pytestmark = pytest.mark.integration

HOSTNAME = "djangoapp-test-faults"
MANAGERS = {
    "shop": "supervisor",
    "blog": "systemd",
    "wiki": "supervisor",
    "news": "systemd",
}
# Apps with `preload_app`: gunicorn-keeper runs in Gunicorn's place.
PRELOADED = {"wiki", "news"}
CLIENTS = 6
# Load before a fault, so that requests are in flight when it strikes, and after
# the site is back, so that a late failure would show.
LOAD_BEFORE_FAULT = 2.0
LOAD_AFTER_RECOVERY = 4.0
RECOVERY_TIMEOUT = 60.0
# A request that was sent before the service came back may be answered (as a
# failure) a little after: Nginx's upstream connect and the app's own time.
IN_FLIGHT_SECONDS = 1.0
# The host features that run a service of their own, besides the firewall's table,
# and the beginnings of their states' IDs.
HOST_SERVICES = ("fail2ban", "nagios-nrpe-server", "zabbix-agent", "snmpd")
HOST_SERVICE_STATES = tuple(
    f"djangoapp-{feature}-"
    for feature in ("fail2ban", "monitoring", "nrpe", "zabbix", "snmp")
)

# The Gunicorn master of an app as its pidfile names it, if it runs, and those of
# its workers that have loaded the app (their reports in workers/, written by the
# hooks of gunicorn.conf.py).
GUNICORN_STATE = r"""
import json, os, sys
run_dir = sys.argv[1]
try:
    with open(os.path.join(run_dir, "gunicorn.pid")) as pidfile:
        master = int(pidfile.read())
    os.kill(master, 0)
except (OSError, ValueError):
    master = None
ready = []
reports = os.path.join(run_dir, "workers")
if master and os.path.isdir(reports):
    for name in os.listdir(reports):
        try:
            with open(f"/proc/{name.split('.')[0]}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if parent == master:
            ready.append(int(name.split(".")[0]))
print(json.dumps({"master": master, "ready": sorted(ready)}))
"""

# The listening sockets bound at a path, each with the pids that hold it open.
SOCKET_HOLDERS = r"""
import json, os, sys
listening = set()
with open("/proc/net/unix") as table:
    next(table)
    for line in table:
        fields = line.split()
        # Flags 00010000: a listening socket.
        if len(fields) == 8 and fields[7] == sys.argv[1] and fields[3] == "00010000":
            listening.add(fields[6])
holders = {inode: [] for inode in listening}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in holders:
            holders[target[8:-1]].append(int(pid))
print(json.dumps(sorted(sorted(set(pids)) for pids in holders.values())))
"""


def faults_pillar(module) -> dict:
    master = module.MASTER_IP
    return {
        "djangoapp": {
            "apps": {
                name: app_pillar(
                    name,
                    wsgi="demosite.wsgi:application",
                    process_manager=manager,
                    preload_app=name in PRELOADED,
                    database={"engine": "postgresql", "password": f"{name}-db-4c81"},
                )
                for name, manager in MANAGERS.items()
            },
            "proxy": {"http": module.PROXY_URL, "https": module.PROXY_URL},
            "firewall": {"enabled": True, "allow": [22, 80]},
            "fail2ban": {"enabled": True},
            # Each agent answers this machine only.
            "monitoring": {
                "nrpe": {"enabled": True, "allowed_hosts": [master]},
                "zabbix": {"enabled": True, "server": master},
                "snmp": {
                    "enabled": True,
                    "community": SNMP_COMMUNITY,
                    "allowed": [master],
                },
            },
        }
    }


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    module = bootable_testhost(slot_from("DJANGOAPP_FAULTS_SLOT", 64))
    work = tmp_path_factory.mktemp("faults")
    demorepo.build_repo(work / "git" / "demo.git")
    with converged_second_host(module, work, HOSTNAME, faults_pillar(module)) as host:
        host.converged()
        report(
            "first converge",
            {
                "states_s": state_seconds(host.first_apply),
                "fail2ban_and_agents_s": state_seconds(
                    host.first_apply, HOST_SERVICE_STATES
                ),
            },
        )
        yield host


def state_seconds(state_return: dict, prefixes: tuple[str, ...] = ("",)) -> float:
    """The seconds the states whose ID begins with one of ``prefixes`` took."""
    milliseconds = sum(
        state["duration"]
        for state in state_return.values()
        if state["__id__"].startswith(prefixes)
    )
    return round(milliseconds / 1000, 1)


def load_on(host: SecondHost, app: str) -> Load:
    return Load(host.ip, 80, "/", f"{app}.test", clients=CLIENTS)


def gunicorn_state(host: SecondHost, app: str) -> dict:
    result = host.host.exec(["python3", "-c", GUNICORN_STATE, f"/run/djangoapp/{app}"])
    return json.loads(result.stdout)


def process_manager_pid(host: SecondHost, app: str) -> int:
    if MANAGERS[app] == "systemd":
        return 1
    return int(host.host.exec(["supervisorctl", "pid"]).stdout)


def keeper_pid(host: SecondHost, app: str) -> int:
    """The main process of the app's service: its gunicorn-keeper, when preloaded."""
    if MANAGERS[app] == "systemd":
        command = ["systemctl", "show", "--property=MainPID", "--value"]
        return int(host.host.exec([*command, f"djangoapp-{app}"]).stdout)
    return int(host.host.exec(["supervisorctl", "pid", f"djangoapp-{app}"]).stdout)


def alive(host: SecondHost, pid: int) -> bool:
    return host.host.exec(["kill", "-0", str(pid)], check=False).rc == 0


def parent_pid(host: SecondHost, pid: int) -> int:
    stat = host.host.exec(["cat", f"/proc/{pid}/stat"]).stdout
    return int(stat.rpartition(")")[2].split()[1])


def assert_the_process_manager_holds_the_socket(host: SecondHost, app: str) -> None:
    """One socket listens at the app's path, held open by its process manager (so
    that it outlives the master) and by the master; preloaded, also by the
    gunicorn-keeper that started the master."""
    result = host.host.exec(
        ["python3", "-c", SOCKET_HOLDERS, f"/run/djangoapp/{app}/gunicorn.sock"]
    )
    sockets = json.loads(result.stdout)
    assert len(sockets) == 1, sockets
    holders = set(sockets[0])
    master = gunicorn_state(host, app)["master"]
    assert {process_manager_pid(host, app), master} <= holders, (sockets, master)
    if app in PRELOADED:
        keeper = keeper_pid(host, app)
        assert keeper in holders, (sockets, keeper)
        assert parent_pid(host, master) == keeper


def wait_until(condition: Callable[[], bool], what: str) -> float:
    """Seconds until ``condition()`` held, polled every 0.1 s."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > RECOVERY_TIMEOUT:
            pytest.fail(f"not within {RECOVERY_TIMEOUT} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def release_under_load(host: SecondHost, app: str, version: str) -> dict:
    with load_on(host, app) as load:
        rc, release, output = host.salt(
            "djangoapp.release", f"version={version}", f"app={app}"
        )
    print(f"release of {app} {version}: {load.result}")
    assert rc == 0, output
    assert release["result"] is True, output
    assert release["version"] == version
    assert load.result.failed == 0, load.result.failures
    assert load.result.succeeded > 0
    return release


def report(label: str, figures: dict) -> None:
    print(f"FIGURES {label}: {json.dumps(figures)}")


@pytest.mark.parametrize("app", list(MANAGERS))
def test_a_killed_master_comes_back_and_the_next_release_has_no_failure(faults, app):
    before = gunicorn_state(faults, app)
    assert before["master"] is not None and before["ready"], before
    assert_the_process_manager_holds_the_socket(faults, app)

    def back() -> bool:
        now = gunicorn_state(faults, app)
        replaced = now["master"] not in (None, before["master"])
        return replaced and len(now["ready"]) == len(before["ready"])

    with load_on(faults, app) as load:
        time.sleep(LOAD_BEFORE_FAULT)
        killed = time.monotonic() - load.started
        faults.host.exec(["kill", "-KILL", str(before["master"])])
        back_after = wait_until(back, f"a new master of {app} with its workers")
        time.sleep(LOAD_AFTER_RECOVERY)
    result = load.result
    failed_after_kill = [round(at - killed, 3) for at in result.failed_at]
    report(
        f"killed master of {app} ({MANAGERS[app]})",
        {
            "sent": result.sent,
            "failed": result.failed,
            "new_master_ready_after_s": round(back_after, 2),
            "first_failure_after_kill_s": min(failed_after_kill, default=None),
            "last_failure_after_kill_s": max(failed_after_kill, default=None),
            "longest_gap_s": round(result.longest_gap, 3),
            "first_failures": result.failures[:3],
        },
    )
    # Only the requests in flight fail (a client has one at a time): the process
    # manager holds the socket (systemd's socket unit, supervisord's fcgi-program
    # socket, bound again before the new master starts), so later ones wait in its
    # backlog for the new master.
    assert result.failed <= CLIENTS, result.failures
    assert all(0 <= at <= IN_FLIGHT_SECONDS for at in failed_after_kill), (
        failed_after_kill
    )
    assert result.succeeded > 0
    # The killed master's workers leave by themselves once they find it gone: at
    # once when their socket has no connection waiting, else when their wait for
    # one ends (half of Gunicorn's timeout); until then they hold the socket that
    # the process manager bound before this one.
    wait_until(
        lambda: not any(alive(faults, pid) for pid in before["ready"]),
        f"the workers of the killed master of {app} gone",
    )
    assert_the_process_manager_holds_the_socket(faults, app)

    release = release_under_load(faults, app, "v1.0.1")
    reload = next(step for step in release["steps"] if step["name"] == "reload")
    # The new master's own control socket, not a stale one: workers handed over;
    # preloaded, a master of the release started by the keeper.
    assert reload["method"] == ("preloaded" if app in PRELOADED else "rolling"), reload
    if app in PRELOADED:
        # the master started beside the release's checks ran them and took over
        assert reload["standby"] is True, reload
        preflight = next(s for s in release["steps"] if s["name"] == "preflight")
        assert preflight["in_standby"] is True, preflight
    assert release["service_running"] is True


def database_ready(host: SecondHost) -> bool:
    return host.host.exec(["pg_isready", "--quiet"], check=False).rc == 0


def test_workers_recover_by_themselves_from_a_database_restart(faults):
    masters = {app: gunicorn_state(faults, app) for app in MANAGERS}
    loads = {app: load_on(faults, app) for app in MANAGERS}
    for load in loads.values():
        load.start()
    try:
        time.sleep(LOAD_BEFORE_FAULT)
        started = time.monotonic()
        faults.host.exec(["systemctl", "restart", "postgresql"])
        returned = time.monotonic()
        ready_after = wait_until(lambda: database_ready(faults), "PostgreSQL ready")
        time.sleep(LOAD_AFTER_RECOVERY)
    finally:
        for load in loads.values():
            load.stop()
    for app, load in loads.items():
        result = load.result
        began = started - load.started
        failed_after_return = [
            round(at - (returned - load.started), 3) for at in result.failed_at
        ]
        report(
            f"PostgreSQL restarted, {app} ({MANAGERS[app]})",
            {
                "sent": result.sent,
                "failed": result.failed,
                "restart_s": round(returned - started, 2),
                "ready_after_return_s": round(ready_after, 2),
                "first_failure_after_start_s": min(
                    (round(at - began, 3) for at in result.failed_at), default=None
                ),
                "last_failure_after_return_s": max(failed_after_return, default=None),
                "longest_gap_s": round(result.longest_gap, 3),
                "first_failures": result.failures[:3],
            },
        )
        # Failures only while the database was away: none before the restart,
        # none once it accepts connections again (each worker's persistent
        # connection is checked before use and opened again).
        assert all(at >= began for at in result.failed_at), result.failed_at
        assert all(
            at <= ready_after + IN_FLIGHT_SECONDS for at in failed_after_return
        ), failed_after_return
        assert result.succeeded > 0
        # By themselves: the same master and workers, none restarted.
        assert gunicorn_state(faults, app) == masters[app]
    release_under_load(faults, "shop", "v1.1.0")


def answers(host: SecondHost, app: str) -> bool:
    probe = host.host.exec(
        ["python3", "-c", HTTP_PROBE, "http://127.0.0.1/", f"{app}.test"], check=False
    )
    return probe.rc == 0 and json.loads(probe.stdout)["status"] == 200


def page_version(body: str) -> str | None:
    shown = re.search(r'<span class="version">([^<]*)</span>', body)
    return shown.group(1) if shown else None


def run_dir_of(host: SecondHost, app: str) -> dict:
    infra = host.infra
    run_dir = infra.file(f"/run/djangoapp/{app}")
    return {
        "directory": run_dir.is_directory,
        "owner": (run_dir.user, run_dir.group, run_dir.mode),
        "socket": infra.file(f"/run/djangoapp/{app}/gunicorn.sock").is_socket,
        "control_socket": infra.file(f"/run/djangoapp/{app}/gunicorn.ctl").is_socket,
    }


def jails(host: SecondHost) -> list[str] | None:
    """``fail2ban-client status``'s lines, None while its server does not answer."""
    status = host.host.exec(["fail2ban-client", "status"], check=False)
    return status.stdout.splitlines() if status.rc == 0 else None


def test_after_a_power_cycle_the_same_releases_serve_with_no_manual_step(faults):
    live = {app: faults.salt("djangoapp.status", app)[1] for app in MANAGERS}
    assert all(status["current"] for status in live.values()), live
    powered_off = time.monotonic()
    faults.host.power_cycle()
    off_and_booted = time.monotonic() - powered_off
    faults.infra = nspawn_host(faults.host.pid1)
    for app in MANAGERS:
        serving = wait_until(
            lambda app=app: answers(faults, app), f"{app} answering after the boot"
        )
        report(
            f"power cycle, {app} ({MANAGERS[app]})",
            {
                "off_and_booted_s": round(off_and_booted, 1),
                "serving_after_boot_s": round(serving, 2),
            },
        )
        rc, status, output = faults.salt("djangoapp.status", app)
        assert rc == 0, output
        assert status["current"] == live[app]["current"], output
        assert status["version"] == live[app]["version"], output
        assert status["service"]["running"] is True, output
        assert status["service"]["master_release"] == live[app]["current"], output
        page = faults.get("http://127.0.0.1/", f"{app}.test")
        assert page["status"] == 200
        assert page_version(page["body"]) == live[app]["version"]
        assert run_dir_of(faults, app) == {
            "directory": True,
            "owner": (app, "www-data", 0o750),
            "socket": True,
            # preloaded: two masters live side by side for a moment, neither has one
            "control_socket": app not in PRELOADED,
        }
        assert_the_process_manager_holds_the_socket(faults, app)
    assert faults.infra.run("nft list table inet djangoapp").rc == 0
    services = faults.host.exec(["systemctl", "is-active", *HOST_SERVICES], check=False)
    assert services.stdout.split() == ["active"] * len(HOST_SERVICES), services.stdout
    jails_after = wait_until(lambda: jails(faults) is not None, "fail2ban answering")
    # The formula's jail, and no other.
    assert jails(faults) == ["Status", "|- Number of jail:\t1", "`- Jail list:\tsshd"]
    report(
        "power cycle, host services", {"fail2ban_jails_after_s": round(jails_after, 2)}
    )
    # Each agent answers this machine through the firewall: NRPE and the Zabbix agent
    # run an app's check as its user, snmpd reads the system.
    rc, line = check_nrpe(faults.ip, "check_djangoapp_shop_database")
    assert rc == 0, line
    assert re.fullmatch(
        r"DATABASE OK - postgresql shop@localhost/shop answers in [0-9.]+ s"
        r" \| time=[0-9.]+s;;;0",
        line,
    ), line
    assert zabbix_get(faults.ip, "djangoapp.status.blog_gunicorn") == "0"
    for app in ("blog", "news"):
        gunicorn = zabbix_get(faults.ip, f"djangoapp.output.{app}_gunicorn")
        master = gunicorn_state(faults, app)["master"]
        assert gunicorn == (
            f"GUNICORN OK - master pid {master} with 5 workers | workers=5;;;0"
        ), gunicorn
    system = snmpget(faults.ip, SNMP_COMMUNITY, SYS_DESCR)
    assert system.returncode == 0, system.stderr
    assert system.stdout.startswith(f'{SYS_DESCR} = STRING: "Linux '), system.stdout

    rc, again, output = faults.apply()
    assert rc == 0 and not failed_states(again), output
    assert changed_states(again) == []
    release_under_load(faults, "blog", "v1.1.0")


KEEPER_PROGRAM = "/usr/local/lib/djangoapp/gunicorn-keeper"


def keeper_program(host: SecondHost, app: str) -> str:
    """The SHA-256 of the program the app's gunicorn-keeper runs (its own word)."""
    record = host.host.exec(["cat", f"/run/djangoapp/{app}/keeper.json"]).stdout
    return json.loads(record)["program"]


def installed_program(host: SecondHost) -> str:
    return host.host.exec(["sha256sum", KEEPER_PROGRAM]).stdout.split()[0]


def test_a_newer_gunicorn_keeper_takes_over_without_a_restart(faults):
    """The formula's gunicorn-keeper changes under running keepers: each one executes
    the new program in its own process when the app is reloaded, and the apply that
    puts the formula's program back does the same, with the same main process of the
    service and no failed request."""
    preloaded = sorted(PRELOADED)
    keepers = {app: keeper_pid(faults, app) for app in preloaded}
    formula = installed_program(faults)
    assert {app: keeper_program(faults, app) for app in preloaded} == dict.fromkeys(
        preloaded, formula
    )
    faults.host.exec(["sh", "-c", f"echo '# another keeper' >> {KEEPER_PROGRAM}"])
    other = installed_program(faults)
    with load_on(faults, "wiki") as first, load_on(faults, "news") as second:
        for app in preloaded:
            rc, reload, output = faults.salt("djangoapp.reload", app)
            assert rc == 0 and reload["keeper_renewed"] is True, output
            assert keeper_program(faults, app) == other
        rc, applied, output = faults.apply()
    assert rc == 0 and not failed_states(applied), output
    assert installed_program(faults) == formula
    for app in preloaded:
        reloaded = next(
            state
            for state in applied.values()
            if state["__id__"] == f"djangoapp-{app}-gunicorn-reloaded"
        )
        assert reloaded["changes"]["djangoapp.reload"]["keeper_renewed"] is True
        assert keeper_program(faults, app) == formula
        assert keeper_pid(faults, app) == keepers[app]
        assert_the_process_manager_holds_the_socket(faults, app)
    for load in (first, second):
        assert load.result.failed == 0, load.result.failures
        assert load.result.succeeded > 0
