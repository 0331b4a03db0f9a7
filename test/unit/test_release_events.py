"""
What a release tells its listeners, with real releases of the tiny Django project
(see conftest.py): events only when something is released, the jid of the job that
made it (a state run's own), and what a rollback leaves in the database. The tests
run in file order and share one app.
"""

import json
import os
import pathlib

import djangoapp_config
import djangoapp_django
import djangoapp_flow
import djangoapp_host
import djangoapp_migrations
import pytest

APP = "eventapp"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("eventbase") / "srv"


@pytest.fixture
def app(tiny_app, base, config_dir):
    tiny_app(APP, base)
    return djangoapp_config.load_app(APP, str(config_dir))


@pytest.fixture
def listened(mods):
    """A host whose events are kept: ``(host, sent)``; ``sent`` is complete once
    ``wait(host)`` returns."""
    sent = []
    host = djangoapp_host.Host(
        mods["cmd.run_all"], lambda tag, data: sent.append((tag, data))
    )
    return host, sent


def wait(host):
    for thread in host._events:
        thread.join()


def ledger(base):
    path = pathlib.Path(base) / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_a_release_sends_start_and_success_with_its_jid(app, base, listened):
    host, sent = listened
    ret = djangoapp_flow.release(app, "v1.0.0", host, user="alice", jid="20260101")
    wait(host)
    assert ret["result"] is True and ret["changed"] is True, ret
    assert [tag for tag, _ in sent] == [
        "djangoapp/release/start",
        "djangoapp/release/success",
    ]
    for _, data in sent:
        assert (data["app"], data["action"], data["version"]) == (
            APP,
            "release",
            "v1.0.0",
        )
        assert (data["user"], data["jid"]) == ("alice", "20260101")
        assert data["id"] == ret["id"]
    assert sent[0][1]["sha"] == ret["sha"]
    assert ledger(base)[-1]["jid"] == "20260101"
    # the preflight's stages on request (a rollback's check) are not a release's
    [preflight] = [step for step in ret["steps"] if step["name"] == "preflight"]
    timings = preflight["timings"]
    assert "applied_migrations" not in timings and "migrate_plan" in timings


def test_a_release_of_the_live_version_sends_nothing(app, base, listened):
    host, sent = listened
    before = ledger(base)
    ret = djangoapp_flow.release(app, "v1.0.0", host, user="alice", jid="20260102")
    wait(host)
    assert ret["result"] is True and ret["changed"] is False, ret
    assert sent == []
    assert ledger(base) == before


def test_a_state_run_records_its_jid(states, minion_opts, base, app):
    """The state finds the job running it in the proc file the minion (or
    salt-call) writes for it, as Salt hands the jid to the state run only."""
    import salt.payload

    proc_dir = pathlib.Path(minion_opts["cachedir"]) / "proc"
    proc_dir.mkdir(exist_ok=True)
    job = {"fun": "state.apply", "pid": os.getpid(), "jid": "20260103", "user": "bob"}
    other = {"fun": "test.sleep", "pid": os.getpid(), "jid": "20260199"}
    (proc_dir / "20260103").write_bytes(salt.payload.dumps(job))
    (proc_dir / "20260199").write_bytes(salt.payload.dumps(other))
    try:
        ret = states["djangoapp.released"](APP, version="v1.2.0")
    finally:
        (proc_dir / "20260103").unlink()
        (proc_dir / "20260199").unlink()
    assert ret["result"] is True, ret["comment"]
    assert ret["changes"]["release"]["new"].startswith("v1.2.0-")
    last = ledger(base)[-1]
    assert (last["id"], last["jid"], last["user"]) == (
        ret["changes"]["release"]["new"],
        "20260103",
        "bob",
    )


def test_without_a_job_a_state_run_records_no_jid(states, base, app):
    ret = states["djangoapp.released"](APP, version="v1.0.0")
    assert ret["result"] is True and ret["changes"], ret["comment"]
    assert ledger(base)[-1]["jid"] is None


def test_the_migration_check_names_what_the_target_lacks(app, base, mods):
    """v1.2.0 migrated the database to tinyapp.0002_item_note; v1.0.0 stops at
    0001 (v1.0.0 is live again: the check runs in the release it names)."""
    layout = djangoapp_flow.Layout(app["base_dir"])
    host = djangoapp_host.Host(mods["cmd.run_all"])
    target = layout.current_id()
    newer = next(
        e["id"] for e in reversed(ledger(base)) if e["id"].startswith("v1.2.0-")
    )
    check = djangoapp_migrations.start_check(
        {**app, "database": {"engine": "sqlite"}}, host, layout.release(target), print
    )
    assert check.by == "django"  # SQLite: no client of ours asks it
    found = check.result(layout, target, newer)
    assert found["ok"] is True, found
    assert found["ahead"] == ["tinyapp.0002_item_note"]
    assert found["warning"] == (
        f"the database keeps 1 migration(s) that {target} does not have "
        "(tinyapp.0002_item_note): a rollback does not undo migrations"
    )
    # the release that has it lacks none
    found = djangoapp_migrations.start_check(
        {**app, "database": {"engine": "sqlite"}}, host, layout.release(newer), print
    ).result(layout, newer, target)
    assert found == {"ok": True, "ahead": []}


def test_a_release_records_the_migrations_its_code_knows(app, base):
    """What a later rollback to it compares the database with, as the
    preflight's Django loaded them."""
    layout = djangoapp_flow.Layout(app["base_dir"])
    known = {}
    for rid in layout.on_disk():
        record = layout.release_json(rid)
        known[record["version"]] = record["known_migrations"]
    assert set(known) == {"v1.0.0", "v1.2.0"}
    for version, tinyapp in (
        ("v1.0.0", ["tinyapp.0001_initial"]),
        ("v1.2.0", ["tinyapp.0001_initial", "tinyapp.0002_item_note"]),
    ):
        assert "tinyapp" in known[version]["apps"]
        names = known[version]["names"]
        assert [name for name in names if name.startswith("tinyapp.")] == tinyapp
        assert "contenttypes.0001_initial" in names


class ClientHost:
    """Answers the database client's query with ``rows``, and keeps its argv."""

    def __init__(self, rows, retcode=0):
        self.rows, self.retcode, self.calls = rows, retcode, []

    def run(self, argv, **options):
        self.calls.append((argv, options))
        stdout = "".join(f"{app}\t{name}\n" for app, name in self.rows)
        return {"retcode": self.retcode, "stdout": stdout, "stderr": "no such table"}


KNOWN = {
    "apps": ["auth", "shop"],
    "names": ["auth.0001_initial", "shop.0001_initial", "shop.0001_squashed_0003"],
}
APPLIED = [
    ("auth", "0001_initial"),
    ("shop", "0001_initial"),
    ("shop", "0003_price"),  # replaced by the squashed migration: known
    ("shop", "0004_stock"),  # ahead
    ("gone", "0001_initial"),  # an app the release does not install: left out
]


@pytest.fixture
def recorded(app, tmp_path):
    """A release dir whose release.json knows KNOWN, with the squash's replaces."""
    rdir = tmp_path / "release"
    (rdir / "venv" / "bin").mkdir(parents=True)
    (rdir / "venv" / "bin" / "python").touch()
    names = KNOWN["names"] + ["shop.0002_name", "shop.0003_price"]
    record = {"version": "v2.0.0", "known_migrations": {**KNOWN, "names": names}}
    (rdir / "release.json").write_text(json.dumps(record))
    env = pathlib.Path(app["env_file"])
    saved = env.read_text() if env.exists() else None
    env.write_text(json.dumps({"DATABASE_URL": "postgres://shop:pw@db:5433/shop"}))
    yield rdir
    if saved is None:
        env.unlink()
    else:
        env.write_text(saved)


def test_a_recorded_release_is_checked_by_the_database_client(app, base, recorded):
    host = ClientHost(APPLIED)
    cfg = {**app, "database": {"engine": "postgresql"}}
    check = djangoapp_migrations.start_check(cfg, host, str(recorded), print)
    assert check.by == "record"
    found = check.result(djangoapp_flow.Layout(app["base_dir"]), "v2.0.0-x", None)
    assert found == {
        "ok": True,
        "ahead": ["shop.0004_stock"],
        "warning": djangoapp_migrations.ahead_warning("v2.0.0-x", ["shop.0004_stock"]),
    }
    [(argv, options)] = host.calls
    assert argv[0] == "psql"
    assert argv[-2:] == [
        "--dbname=shop",
        "--command=" + djangoapp_migrations.APPLIED_QUERY,
    ]
    assert {
        "--host=db",
        "--port=5433",
        "--username=shop",
        "--field-separator=\t",
    } <= set(argv)
    assert options["env"]["PGPASSWORD"] == "pw"


def test_a_database_that_cannot_list_its_migrations_says_so(app, base, recorded):
    env = {"DATABASE_URL": "mysql://shop:pw@db/shop"}
    pathlib.Path(app["env_file"]).write_text(json.dumps(env))
    host = ClientHost([], retcode=1)
    cfg = {**app, "database": {"engine": "mysql"}}
    check = djangoapp_migrations.start_check(cfg, host, str(recorded), print)
    assert check.by == "record"
    found = check.result(djangoapp_flow.Layout(app["base_dir"]), "v2.0.0-x", None)
    [(argv, options)] = host.calls
    assert argv[:3] == ["mysql", "--batch", "--skip-column-names"]
    assert argv[-1] == "shop" and options["env"]["MYSQL_PWD"] == "pw"
    assert found == {
        "ok": False,
        "error": "the database did not list its migrations: no such table",
    }


class PreflightHost(ClientHost):
    """Answers as the release's preflight would, with ``known`` and ``rows``."""

    def __init__(self, known, rows):
        super().__init__(rows)
        self.known = known

    def run(self, argv, **options):
        self.calls.append((argv, options))
        found = {
            "ok": True,
            "known_migrations": self.known,
            "applied_migrations": [f"{app}.{name}" for app, name in self.rows],
        }
        marker = djangoapp_django.PREFLIGHT_MARKER
        return {"retcode": 0, "stdout": f"\n{marker}{json.dumps(found)}\n"}


def test_a_release_recorded_before_is_checked_by_its_django(app, base, recorded):
    record = json.loads((recorded / "release.json").read_text())
    known = record.pop("known_migrations")
    (recorded / "release.json").write_text(json.dumps(record))
    host = PreflightHost(known, APPLIED)
    cfg = {**app, "database": {"engine": "postgresql"}}
    check = djangoapp_migrations.start_check(cfg, host, str(recorded), print)
    assert check.by == "django"
    found = check.result(djangoapp_flow.Layout(app["base_dir"]), "v2.0.0-x", None)
    assert found["ahead"] == ["shop.0004_stock"]
    [(argv, options)] = host.calls
    assert argv[:2] == [f"{recorded}/venv/bin/python", "-"]
    assert json.loads(argv[2]) == {"stages": ["setup", "applied_migrations"]}
    assert options["runas"] == app["user"]


def test_no_check_for_an_app_without_a_database(app, base, mods):
    layout = djangoapp_flow.Layout(app["base_dir"])
    host = djangoapp_host.Host(mods["cmd.run_all"])
    assert app["database"]["engine"] == "none"
    rdir = layout.release(layout.current_id())
    assert djangoapp_migrations.start_check(app, host, rdir, print) is None


def test_a_rollback_says_which_migrations_it_leaves(app, base, listened):
    host, sent = listened
    djangoapp_flow.release(app, "v1.2.0", host, user="alice", jid="20260104")
    newer = djangoapp_flow.Layout(app["base_dir"]).current_id()
    sent.clear()
    with_db = {**app, "database": {"engine": "sqlite"}}
    ret = djangoapp_flow.rollback(with_db, host, user="carol", jid="20260105")
    wait(host)
    assert ret["result"] is True and ret["changed"] is True, ret
    assert ret["version"] == "v1.0.0"
    assert ret["migrations_ahead"] == ["tinyapp.0002_item_note"]
    assert ret["warnings"] == [
        f"the database keeps 1 migration(s) that {ret['id']} does not have "
        "(tinyapp.0002_item_note): a rollback does not undo migrations"
    ]
    assert [s["name"] for s in ret["steps"]][-1] == "migrations"
    last = ledger(base)[-1]
    assert (last["event"], last["from"], last["jid"]) == ("rollback", newer, "20260105")
    assert last["migrations_ahead"] == ["tinyapp.0002_item_note"]
    assert [tag for tag, _ in sent] == ["djangoapp/release/rollback"]
    data = sent[0][1]
    assert (data["id"], data["from"], data["jid"], data["user"]) == (
        ret["id"],
        newer,
        "20260105",
        "carol",
    )
    assert data["migrations_ahead"] == ["tinyapp.0002_item_note"]
