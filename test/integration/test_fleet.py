"""A fleet through the documented pillar contract only: four systemd-booted hosts
(lb, web1, web2, db with the db and cache roles) on a private bridge made by the
test, a salt-master on this machine, and each minion's roles from its own pillar.
Two apps: the demo on PostgreSQL and Redis, shop on MariaDB and Memcached, all four
servers on the db minion. ``salt '*' state.apply`` builds it from nothing; the
rolling release and rollback (``salt-run state.orchestrate
djangoapp.orchestrate.release``) run under load through the load balancer; a release
that fails on web2 switches web1 back; web2 powered off under load; the databases
and caches answer the web minions only; a MariaDB migration waits for its lock.

The fleet is test/integration/fleet.py's (slots of its own, ``$DJANGOAPP_FLEET_SLOT``).
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import shlex
import socket
import time

import pytest
import yaml
from fleet import (
    FLEET_HOSTS,
    MARIADB_APP,
    REPO,
    ROLES,
    fleet_of_hosts,
    write_demo_pillar,
)

from loadgen import Load
from stack import HTTP_PROBE, changed_states, failed_states

pytestmark = pytest.mark.integration

APP = "demo"
SERVER_NAME = "demo.test"
SHOP_SERVER_NAME = f"{MARIADB_APP}.test"
WEBS = ("web1", "web2")
CLIENTS = 24
# The steps of a rolling release, web minion by web minion.
ROLLED = [(web, step) for web in WEBS for step in ("drain", "release", "ready")]
VERSION = re.compile(rb'<span class="version">([^<]+)</span>')
CONVERGE_TIMEOUT = 1800


def served_version(body: bytes) -> str | None:
    found = VERSION.search(body)
    return found.group(1).decode() if found else None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, request):
    site_tree = tmp_path_factory.mktemp("fleet-site")
    (site_tree / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["djangoapp"]}}))
    roots = {"file_roots": {"base": [str(site_tree), str(REPO / "salt")]}}
    with fleet_of_hosts(tmp_path_factory, request, master_config=roots) as fleet:
        write_demo_pillar(fleet, with_mariadb_app=True)
        synced = fleet.salt("*", "saltutil.sync_all")
        assert all("modules.djangoapp" in synced[name]["modules"] for name in ROLES)
        mined = fleet.salt("*", "mine.update")
        assert mined == {name: True for name in FLEET_HOSTS}, mined
        started = time.monotonic()
        fleet.first_apply = fleet.salt("*", "state.apply", timeout=CONVERGE_TIMEOUT)
        fleet.timings["first state.apply"] = round(time.monotonic() - started, 1)
        fleet.salt_run("saltutil.sync_runners")
        yield fleet


@pytest.fixture(scope="module")
def converged(fleet):
    failures = {
        name: failed_states(fleet.first_apply.get(name)) for name in FLEET_HOSTS
    }
    if any(failures.values()):
        pytest.fail(f"state.apply failed: {json.dumps(failures, indent=1)}")
    return fleet


def version_on(fleet, web: str, server_name: str = SERVER_NAME) -> str | None:
    """The version web minion ``web`` serves, asked through its own Nginx; None
    when it does not answer 200."""
    result = fleet.hosts[web].exec(
        ["python3", "-c", HTTP_PROBE, "http://127.0.0.1/", server_name], check=False
    )
    try:
        page = json.loads(result.stdout)
    except ValueError:
        return None
    if page["status"] != 200:
        return None
    return served_version(page["body"].encode())


def through_lb(
    fleet, url: str = "https://127.0.0.1/", server_name: str = SERVER_NAME
) -> dict:
    result = fleet.hosts["lb"].exec(["python3", "-c", HTTP_PROBE, url, server_name])
    return json.loads(result.stdout)


def load_through_lb(fleet) -> Load:
    """The clients, over HTTPS to the load balancer (the demo's TLS ends there)."""
    return Load(
        fleet.address("lb"),
        443,
        "/",
        SERVER_NAME,
        clients=CLIENTS,
        classify=served_version,
        tls=True,
    )


def connects(fleet, source: str | None, target: str, port: int) -> bool:
    """Whether a TCP connection from host ``source`` (None: this machine) to the
    bridge address of host ``target`` opens within 3 s."""
    address = fleet.address(target)
    if source is None:
        try:
            with socket.create_connection((address, port), timeout=3):
                return True
        except OSError:
            return False
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    result = fleet.hosts[source].exec(
        ["python3", "-c", probe, address, str(port)], check=False
    )
    return result.rc == 0


def orchestrate(fleet, sls: str, **pillar) -> dict:
    """``salt-run state.orchestrate djangoapp.orchestrate.<sls> pillar=...``: the
    runner's return inside the orchestration's."""
    ran = fleet.salt_run(
        "state.orchestrate", f"djangoapp.orchestrate.{sls}", pillar=pillar, check=False
    )
    (state,) = ran["data"][fleet.master.id].values()
    return state["changes"]["return"]


def test_the_fleet_converges_from_nothing_then_changes_nothing(converged):
    fleet = converged
    assert {name: version_on(fleet, name) for name in WEBS} == {
        "web1": "v1.0.0",
        "web2": "v1.0.0",
    }
    page = through_lb(fleet)
    assert page["status"] == 200
    # the page writes to and reads from Redis on the db minion, with the password
    assert "ok (redis)" in page["body"]
    # HTTPS ends at the load balancer: plain HTTP is sent there, with HSTS on HTTPS
    assert page["header_lists"]["strict-transport-security"] == ["max-age=63072000"]
    plain = through_lb(fleet, "http://127.0.0.1/")
    assert (plain["status"], plain["header_lists"]["location"]) == (
        301,
        [f"https://{SERVER_NAME}/"],
    )
    # shop: its own backend, its database MariaDB and its cache Memcached on db
    shop = through_lb(fleet, server_name=SHOP_SERVER_NAME)
    assert (shop["status"], served_version(shop["body"].encode())) == (200, "v1.0.0")
    assert "ok (memcached)" in shop["body"]
    assert {name: version_on(fleet, name, SHOP_SERVER_NAME) for name in WEBS} == {
        "web1": "v1.0.0",
        "web2": "v1.0.0",
    }
    again = fleet.salt("*", "state.apply", timeout=CONVERGE_TIMEOUT)
    assert {name: changed_states(again[name]) for name in FLEET_HOSTS} == {
        name: [] for name in FLEET_HOSTS
    }
    assert {name: failed_states(again[name]) for name in FLEET_HOSTS} == {
        name: [] for name in FLEET_HOSTS
    }


def test_only_the_load_balancer_says_which_scheme_the_client_used(converged):
    """The demo's /scheme/ answers what Django believes (X-Forwarded-Proto): https
    through the load balancer; a client of web1's Nginx that is not a load
    balancer (here web1 itself) says https in vain."""
    fleet = converged
    page = through_lb(fleet, "https://127.0.0.1/scheme/")
    assert (page["status"], page["body"]) == (200, "https")
    spoofed = fleet.hosts["web1"].exec(
        ["python3", "-c", HTTP_PROBE, "http://127.0.0.1/scheme/", SERVER_NAME]
        + ["X-Forwarded-Proto: https"]
    )
    answer = json.loads(spoofed.stdout)
    assert (answer["status"], answer["body"]) == (200, "http")


def test_the_database_and_cache_answer_the_web_minions_only(converged):
    fleet = converged
    for port in (5432, 3306, 6379, 11211):
        assert connects(fleet, "web1", "db", port)
        assert connects(fleet, "web2", "db", port)
        assert not connects(fleet, "lb", "db", port)
        assert not connects(fleet, None, "db", port)
    # the web minions' Nginx answers the load balancer, not this machine
    assert connects(fleet, "lb", "web1", 80)
    assert not connects(fleet, None, "web1", 80)


def nrpe_check(host, check: str) -> str:
    """What NRPE's ``check`` answers, run as NRPE runs it: its command line from
    nrpe.cfg, as the nagios user."""
    command = f"command[{check}]="
    nrpe_cfg = host.exec(["cat", "/etc/nagios/nrpe.cfg"]).stdout.splitlines()
    (line,) = [entry[len(command) :] for entry in nrpe_cfg if entry.startswith(command)]
    return host.exec(["runuser", "-u", "nagios", "--", *shlex.split(line)]).stdout


def test_the_nightly_dumps_are_taken_on_the_db_minion_only(converged):
    """Both apps' databases, dumped on the db minion by each server's superuser
    over its socket (the db minion has no app credentials)."""
    fleet = converged
    db = fleet.hosts["db"]
    timer = ["systemctl", "is-enabled", "djangoapp-backup.timer"]
    assert db.exec(timer).stdout.strip() == "enabled"
    db.exec(["systemctl", "start", "djangoapp-backup.service"])
    dumps = {}
    for app, suffix in ((APP, "dump"), (MARIADB_APP, "sql")):
        nightly = f"/var/backups/djangoapp/{app}/nightly"
        (dump,) = db.exec(["ls", nightly]).stdout.split()
        assert re.fullmatch(rf"{app}-[0-9]{{8}}T[0-9]{{6}}Z\.{suffix}", dump), dump
        dumps[app] = f"{nightly}/{dump}"
        status = json.loads(
            db.exec(["cat", f"/var/lib/djangoapp/backup-status/{app}.json"]).stdout
        )
        assert (status["result"], status["newest"]) == ("ok", dump), status
        checked = nrpe_check(db, f"check_djangoapp_{app}_backup")
        assert checked.startswith(f"BACKUP OK - newest good dump {dump}, "), checked
    listing = db.exec(["pg_restore", "--list", dumps[APP]]).stdout
    assert "TABLE public django_migrations" in listing
    shop_dump = db.exec(["cat", dumps[MARIADB_APP]]).stdout
    assert "CREATE TABLE `django_migrations`" in shop_dump
    assert shop_dump.rstrip().splitlines()[-1].startswith("-- Dump completed on ")
    # each web minion would dump the same database: none does
    for name in (*WEBS, "lb"):
        host = fleet.hosts[name]
        assert host.exec(timer, check=False).rc != 0, name
        assert (
            host.exec(["test", "-e", "/etc/djangoapp/backups.json"], check=False).rc
            == 1
        )


SHOP_LOCK = f"djangoapp:migrate:{MARIADB_APP}"
HOLDER_UNIT = "hold-shop-migration-lock"


def mariadb(db, sql: str) -> str:
    """What ``sql`` answers on the db minion, as MariaDB's root over its socket."""
    answer = db.exec(["mysql", "--batch", "--skip-column-names", "-e", sql])
    return answer.stdout.strip()


def wait_for(what: str, answer, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (found := answer()):
        assert time.monotonic() < deadline, what
        time.sleep(0.5)
    return found


def dumps_of_shop(host) -> list[str]:
    """The dumps (whole or being written) of shop's database on ``host``."""
    found = host.exec(
        [
            "find",
            f"/var/backups/djangoapp/{MARIADB_APP}",
            "-maxdepth",
            "1",
            "-type",
            "f",
        ],
        check=False,
    )
    return sorted(found.stdout.split())


def test_a_mariadb_migration_waits_for_its_lock(converged):
    """The web minions share shop's MariaDB database: while another session holds
    the lock of shop's migrations, web1's release of v1.1.0 waits in it without
    dumping the database or migrating (a dump taken while another minion migrates
    meets tables changing under it); once that session ends, web1 dumps and
    migrates, and web2's release finds nothing left to run."""
    fleet = converged
    db = fleet.hosts["db"]
    web1 = fleet.hosts["web1"]
    applied = "SELECT COUNT(*) FROM shop.django_migrations"
    before = mariadb(db, applied)
    dumps_before = dumps_of_shop(web1)
    hold = f"SELECT GET_LOCK('{SHOP_LOCK}', 0); SELECT SLEEP(900);"
    db.exec(["systemd-run", f"--unit={HOLDER_UNIT}", "--collect", "mysql", "-e", hold])
    try:
        holder = wait_for(
            "the test's session took the lock",
            lambda: mariadb(db, f"SELECT IS_USED_LOCK('{SHOP_LOCK}')").strip("NUL"),
        )
        waiting = (
            "SELECT COUNT(*) FROM information_schema.processlist WHERE USER = 'shop'"
            f" AND HOST LIKE '{fleet.address('web1')}:%' AND INFO LIKE '%GET_LOCK%'"
        )
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            release = pool.submit(
                fleet.salt, "web1", "djangoapp.release", app=MARIADB_APP,
                version="v1.1.0",
            )  # fmt: skip
            wait_for("web1 waits for the lock", lambda: mariadb(db, waiting) == "1")
            time.sleep(2)
            assert not release.done()
            assert mariadb(db, applied) == before
            assert dumps_of_shop(web1) == dumps_before
            mariadb(db, f"KILL {holder}")
            first = release.result()["web1"]
    finally:
        db.exec(["systemctl", "stop", HOLDER_UNIT], check=False)
    assert (first["result"], first["migrations_ran"]) == (True, True), first
    backup = next(step for step in first["steps"] if step["name"] == "backup")
    assert backup["lock_wait"] >= 2, backup
    assert dumps_of_shop(web1) == sorted([*dumps_before, first["backup"]])
    assert int(mariadb(db, applied)) > int(before)
    second = fleet.salt("web2", "djangoapp.release", app=MARIADB_APP, version="v1.1.0")
    assert (second["web2"]["result"], second["web2"]["migrations_ran"]) == (True, False)
    shop = through_lb(fleet, server_name=SHOP_SERVER_NAME)
    assert (shop["status"], served_version(shop["body"].encode())) == (200, "v1.1.0")


def test_a_rolling_release_and_rollback_under_load_fail_no_request(converged):
    fleet = converged
    with load_through_lb(fleet) as load:
        released = orchestrate(fleet, "release", app=APP, version="v1.1.0")
    print("release", load.result, json.dumps(released["steps"], indent=1))
    assert released["result"] is True, released
    assert released["batches"] == [["web1"], ["web2"]]
    assert load.result.failed == 0, load.result
    done = [s for s in released["steps"] if s["step"] == "release"]
    assert [(s["minion"], s["version"]) for s in done] == [
        ("web1", "v1.1.0"),
        ("web2", "v1.1.0"),
    ]
    # the migration ran once, on the first web minion, before any switched
    assert [s["migrations_ran"] for s in done] == [True, False]
    # each web minion left the load balancer and came back around its release
    assert [(s["minion"], s["step"]) for s in released["steps"]] == ROLLED
    assert {name: version_on(fleet, name) for name in WEBS} == {
        "web1": "v1.1.0",
        "web2": "v1.1.0",
    }

    with load_through_lb(fleet) as load:
        rolled = orchestrate(fleet, "rollback", app=APP)
    print("rollback", load.result)
    assert rolled["result"] is True, rolled
    assert load.result.failed == 0, load.result
    assert {name: version_on(fleet, name) for name in WEBS} == {
        "web1": "v1.0.0",
        "web2": "v1.0.0",
    }


def test_a_second_fleet_run_of_the_app_is_refused_while_one_runs(converged):
    fleet = converged
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(orchestrate, fleet, "release", app=APP, version="v1.1.0")
        tag = f"djangoapp/fleet/{APP}/start"
        deadline = time.monotonic() + 120
        while not fleet.events.get_events([(fleet.master.id, tag)], after_time=started):
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.2)
        second = orchestrate(fleet, "release", app=APP, version="v1.1.0")
        done = first.result()
    assert second["result"] is False
    assert second["failed"]["step"] == "lock"
    assert second["failed"]["error"].startswith(
        f"another fleet run holds {APP}: release of v1.1.0 since "
    )
    assert second["steps"] == []
    assert done["result"] is True
    rolled = orchestrate(fleet, "rollback", app=APP)
    assert rolled["result"] is True
    assert {name: version_on(fleet, name) for name in WEBS} == {
        "web1": "v1.0.0",
        "web2": "v1.0.0",
    }


def test_a_release_failing_on_web2_switches_web1_back(converged):
    """web2's health check fails (its app.json asks a path the app does not have):
    the run stops at web2, web1 goes back to v1.0.0, no request fails."""
    fleet = converged
    web2 = fleet.hosts["web2"]
    engine_config = f"/etc/djangoapp/{APP}/app.json"
    saved = web2.get_file(engine_config)
    broken = json.loads(saved)
    broken["health"]["url"] = broken["health"]["url"].replace("/healthz/", "/absent/")
    web2.put_file(engine_config, json.dumps(broken), mode=0o640)
    try:
        with load_through_lb(fleet) as load:
            released = orchestrate(fleet, "release", app=APP, version="v1.1.0")
    finally:
        web2.put_file(engine_config, saved, mode=0o640)
    print("failed release", load.result, json.dumps(released, indent=1))
    assert released["result"] is False
    assert released["failed"]["minion"] == "web2"
    assert released["failed"]["step"] == "health"
    assert released["switched_back"] == ["web1"]
    assert [(s["minion"], s["step"], s["result"]) for s in released["steps"]] == [
        ("web1", "drain", True),
        ("web1", "release", True),
        ("web1", "ready", True),
        ("web2", "drain", True),
        ("web2", "release", False),
        ("web2", "ready", True),
        ("web1", "drain", True),
        ("web1", "switch_back", True),
        ("web1", "ready", True),
    ]
    assert load.result.failed == 0, load.result
    assert {name: version_on(fleet, name) for name in WEBS} == {
        "web1": "v1.0.0",
        "web2": "v1.0.0",
    }


def test_web2_powered_off_under_load_and_back(converged):
    """The load balancer serves from web1 while web2 is off; the failures are at
    most the requests web2 had in flight; web2 rejoins by itself once it is up."""
    fleet = converged
    with load_through_lb(fleet) as load:
        time.sleep(2)
        fleet.hosts["web2"].power_cycle()
        deadline = time.monotonic() + 180
        while version_on(fleet, "web2") != "v1.0.0":
            assert time.monotonic() < deadline, "web2 did not serve again"
            time.sleep(1)
        # HAProxy's check (1 s, rise 2) sees it up again by itself
        seen = None
        while time.monotonic() < deadline:
            seen = fleet.salt("lb", "djangoapp.lb_status")["lb"][APP]["web2"]
            if seen["status"] == "UP":
                break
            time.sleep(1)
        assert seen["status"] == "UP", seen
        time.sleep(3)
    print("power cycle", load.result)
    assert load.result.failed <= CLIENTS, load.result
    assert load.result.sent > 0


def test_a_batch_release_by_role_migrates_once(converged):
    """``salt -b 1 -I 'djangoapp:roles:web' djangoapp.release``, without the load
    balancer's drain: one web minion after the other, each handing its workers over
    as on one host; v1.2.0's migration runs on the first only."""
    fleet = converged
    role = "djangoapp:roles:web"
    with load_through_lb(fleet) as load:
        released = fleet.salt(
            role, "djangoapp.release", tgt_type="pillar", batch=1, app=APP,
            version="v1.2.0",
        )  # fmt: skip
    print("batch release", load.result)
    assert sorted(released) == list(WEBS), released
    assert [released[name]["result"] for name in WEBS] == [True, True], released
    assert sorted(released[name]["migrations_ran"] for name in WEBS) == [False, True]
    assert load.result.failed == 0, load.result
    assert {name: version_on(fleet, name) for name in WEBS} == {
        "web1": "v1.2.0",
        "web2": "v1.2.0",
    }


AUTHOR_COLUMN = (
    "SELECT count(*) FROM information_schema.columns "
    "WHERE table_name = 'notes_note' AND column_name = 'author'"
)
DROP_AUTHOR_COLUMN = "notes.0005_drop_note_author_column"


def test_a_contract_migration_waits_for_the_last_web_minion(converged):
    """v1.2.0 reads every note's author; contract-author drops that column after
    its deploy. Released across the fleet from v1.2.0, the drop waits until no
    web minion serves v1.2.0: no failed request on the minion not yet released."""
    fleet = converged
    db = fleet.hosts["db"]
    column = ["runuser", "-u", "postgres", "--", "psql", "-tA", "-d", APP]
    assert db.exec([*column, "-c", AUTHOR_COLUMN]).stdout.strip() == "1"
    with load_through_lb(fleet) as load:
        released = orchestrate(fleet, "release", app=APP, version="contract-author")
    print("contract release", load.result, json.dumps(released, indent=1))
    assert released["result"] is True, released
    assert [(s["minion"], s["step"]) for s in released["steps"]] == [
        *ROLLED,
        ("web1", "migrate"),
        ("web2", "migrate"),
    ]
    releases = [s for s in released["steps"] if s["step"] == "release"]
    assert [s["migrations_deferred"] for s in releases] == [[DROP_AUTHOR_COLUMN]] * 2
    migrates = [s["migrations"] for s in released["steps"] if s["step"] == "migrate"]
    assert migrates == [[DROP_AUTHOR_COLUMN]] * 2
    assert released["migrated_after_switch"] == [DROP_AUTHOR_COLUMN]
    assert db.exec([*column, "-c", AUTHOR_COLUMN]).stdout.strip() == "0"
    assert load.result.failed == 0, load.result.failures


def test_the_lb_role_taken_off_a_minion_stops_its_haproxy(converged):
    """Last: the lb minion becomes a second cache minion (a role with little to
    install). HAProxy stops, its configuration, certificates and lb.json go; a
    second apply changes nothing."""
    fleet = converged
    lb = fleet.hosts["lb"]
    own = fleet.pillar_dir / "minion_lb.sls"
    pillar = yaml.safe_load(own.read_text())
    pillar["djangoapp"]["roles"] = ["cache"]
    own.write_text(yaml.safe_dump(pillar))
    assert fleet.salt("lb", "saltutil.refresh_pillar", wait=True) == {"lb": True}
    applied = fleet.salt("lb", "state.apply", timeout=CONVERGE_TIMEOUT)["lb"]
    assert failed_states(applied) == [], applied
    changed = {applied[key]["__id__"] for key in changed_states(applied)}
    gone = ["/etc/haproxy/haproxy.cfg", "/etc/haproxy/djangoapp-tls"]
    gone.append("/etc/djangoapp/lb.json")
    assert {"djangoapp-lb-haproxy-service-dead"} | {
        f"djangoapp-lb-file-absent-{path}" for path in gone
    } <= changed, sorted(changed)
    assert lb.exec(["systemctl", "is-active", "haproxy"], check=False).rc != 0
    assert lb.exec(["systemctl", "is-enabled", "haproxy"], check=False).rc != 0
    for path in gone:
        assert lb.exec(["test", "-e", path], check=False).rc == 1, path
    again = fleet.salt("lb", "state.apply", timeout=CONVERGE_TIMEOUT)["lb"]
    assert (changed_states(again), failed_states(again)) == ([], [])
