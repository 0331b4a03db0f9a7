"""The migration lock (djangoapp_django.migration_lock): the client session each
database engine holds it with, and how the engine waits for it. The fleet test
(test/integration/test_fleet.py) holds MariaDB's lock from the db minion and sees a
release wait for it; here a small Python program stands in for the client."""

import sys

import djangoapp_common
import djangoapp_django
import pytest

MARKER = djangoapp_django.MIGRATION_LOCK_MARKER
SAFE_ENV = {"PATH": djangoapp_django.SAFE_PATH, "LANG": "C.UTF-8"}


def database(engine, **settings):
    return {
        "engine": engine,
        "host": "10.0.0.4",
        "port": None,
        "name": "shop",
        "user": "shop",
        "password": "pw",
        **settings,
    }


def test_mariadb_holds_a_named_lock_of_its_own_database():
    argv, env, request = djangoapp_django._lock_session(
        database("mysql", name="it's"), 60
    )
    assert argv == [
        "mysql",
        "--batch",
        "--skip-column-names",
        "--unbuffered",
        "--host=10.0.0.4",
        "--port=3306",
        "--user=shop",
        "it's",
    ]
    assert env == {**SAFE_ENV, "MYSQL_PWD": "pw"}
    # GET_LOCK's names are the server's: the database's name is in it, quoted
    assert request == (
        "SELECT IF(GET_LOCK('djangoapp:migrate:it\\'s', 60) = 1, "
        f"'{MARKER}', 'not taken');\n"
    )


def test_postgresql_holds_an_advisory_lock():
    argv, env, request = djangoapp_django._lock_session(
        database("postgresql", port=5433, password=""), 60
    )
    assert argv == [
        "psql",
        "--no-psqlrc",
        "--no-password",
        "--quiet",
        "--tuples-only",
        "--set=ON_ERROR_STOP=1",
        "--host=10.0.0.4",
        "--port=5433",
        "--username=shop",
        "--dbname=shop",
    ]
    assert env == SAFE_ENV
    assert request == (
        f"SELECT pg_advisory_lock(hashtext('djangoapp:migrate'));\n\\warn {MARKER}\n"
    )


# Stands in for the client: reads the request, says what it is told, then holds
# until its input ends (the engine closes it when the block ends) and notes that.
FAKE_CLIENT = """
import sys
sys.stdin.readline()
print(sys.argv[1], flush=True)
if sys.argv[2] == "exit":
    sys.exit(1)
sys.stdin.read()
open(sys.argv[2], "w").write("released")
"""


def fake_client(monkeypatch, says, then):
    def session(db, wait):
        argv = [sys.executable, "-c", FAKE_CLIENT, says, then]
        return argv, dict(SAFE_ENV), "request\n"

    monkeypatch.setattr(djangoapp_django, "_lock_session", session)


def cfg(engine="mysql"):
    return {"database": {"engine": engine, "name": "shop", "user": "shop"}}


def test_the_lock_is_held_for_as_long_as_the_block_runs(monkeypatch, tmp_path):
    released = tmp_path / "released"
    fake_client(monkeypatch, MARKER, str(released))
    with djangoapp_django.migration_lock(cfg(), {}, str, wait=10):
        assert not released.exists()
    assert released.read_text() == "released"


def test_the_marker_is_found_behind_other_output_in_one_read(monkeypatch, tmp_path):
    """psql prints its query's empty row and the marker together."""
    released = tmp_path / "released"
    fake_client(monkeypatch, f"\n{MARKER}", str(released))
    with djangoapp_django.migration_lock(cfg("postgresql"), {}, str, wait=10):
        assert not released.exists()
    assert released.read_text() == "released"


def test_a_client_that_cannot_take_the_lock_fails_the_migrate_step(monkeypatch):
    denied = "ERROR 1045 (28000): Access denied for user 'shop'@'10.0.0.5'"
    fake_client(monkeypatch, denied, "exit")
    entered = []
    with (
        pytest.raises(djangoapp_common.StepFailed) as failed,
        djangoapp_django.migration_lock(cfg(), {}, str, wait=10),
    ):
        entered.append(True)
    assert (failed.value.step, failed.value.message) == (
        "migrate",
        f"could not take the migration lock: {denied}",
    )
    assert entered == []


def test_a_lock_not_taken_in_time_fails_the_migrate_step(monkeypatch, tmp_path):
    fake_client(monkeypatch, "not taken", str(tmp_path / "released"))
    with (
        pytest.raises(djangoapp_common.StepFailed) as failed,
        djangoapp_django.migration_lock(cfg(), {}, str, wait=1),
    ):
        pass
    assert (failed.value.step, failed.value.message) == (
        "migrate",
        "another release held the migration lock for 1 s",
    )


def test_sqlite_takes_no_lock(monkeypatch):
    def session(db, wait):
        raise AssertionError("no session for SQLite")

    monkeypatch.setattr(djangoapp_django, "_lock_session", session)
    with djangoapp_django.migration_lock(cfg("sqlite"), {}, str, wait=1):
        pass


def test_a_lock_not_taken_for_the_dump_fails_the_backup_step(monkeypatch, tmp_path):
    """The dump before migrating is taken under the lock: waiting for it in vain
    fails the step that waited."""
    fake_client(monkeypatch, "not taken", str(tmp_path / "released"))
    with (
        pytest.raises(djangoapp_common.StepFailed) as failed,
        djangoapp_django.migration_lock(cfg(), {}, str, wait=1, step="backup"),
    ):
        pass
    assert failed.value.step == "backup"
