"""The nightly backup script (salt/djangoapp/files/backups-dump.py): what it dumps,
where, what it rotates away and what it keeps when a dump fails. The dump tools are
replaced by fakes; the integration tests run the real pg_dump."""

import errno
import grp
import json
import os
import re
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def backup(tmp_path, monkeypatch, load_script):
    module = load_script("backups-dump.py")
    monkeypatch.setattr(module, "LOCK_FILE", str(tmp_path / "backup.lock"))
    return module


# The app's group, which may read its status: this process's own here.
GROUP = grp.getgrgid(os.getgid()).gr_name


def configure(root, name, engine="postgresql", url=None, env=True):
    """The app ``name`` added to the apps file under ``root`` (with an env file
    and a group unless ``env`` is false: on a db minion of a fleet the app has
    neither); its nightly dir."""
    env_file = None
    if env:
        env_file = root / "etc" / name / "env.json"
        env_file.parent.mkdir(parents=True)
        env_file.write_text(json.dumps({"DATABASE_URL": url} if url else {}))
    app = {
        "name": name,
        "group": GROUP if env else None,
        "env_file": str(env_file) if env_file else None,
        "backup_dir": str(root / "backups" / name),
        "backup_status": str(root / "lib" / "backup-status" / f"{name}.json"),
        "database": {"engine": engine, "host": "localhost", "name": name, "user": name},
    }
    apps_file = root / "backups.json"
    listed = json.loads(apps_file.read_text()) if apps_file.exists() else []
    apps_file.write_text(json.dumps([*listed, app]))
    return root / "backups" / name / "nightly"


def listed(root, name):
    """The app ``name`` as the apps file under ``root`` lists it."""
    apps = json.loads((root / "backups.json").read_text())
    return next(app for app in apps if app["name"] == name)


def fake_dumper(calls, fail=False):
    def dump(database, path):
        calls.append((database, path))
        if fail:
            Path(path).write_text("half a dump")
            raise OSError("disk full")
        Path(path).write_text("dump")

    return dump


def test_dumps_each_app_and_keeps_the_newest(backup, tmp_path, monkeypatch):
    nightly = configure(tmp_path, "shop")
    other = configure(tmp_path, "shop2")
    calls = []
    monkeypatch.setitem(backup.DUMPERS, "postgresql", (fake_dumper(calls), "dump"))
    old = [f"shop-2000010{day}T030000Z.dump" for day in range(1, 5)]
    for name in old + ["notes.txt"]:
        (nightly / name).parent.mkdir(parents=True, exist_ok=True)
        (nightly / name).write_text("old")
    (other / "shop2-20000101T030000Z.dump").parent.mkdir(parents=True)
    (other / "shop2-20000101T030000Z.dump").write_text("old")

    assert (
        backup.main(["--apps-file", str(tmp_path / "backups.json"), "--keep", "3"]) == 0
    )

    assert [database["name"] for database, _ in calls] == ["shop", "shop2"]
    left = sorted(path.name for path in nightly.iterdir())
    assert left[0] == "notes.txt"  # not a dump of ours: left alone
    assert left[1:3] == old[-2:]
    assert left[3].startswith("shop-") and left[3].endswith("Z.dump")
    assert len(left) == 4
    # Rotation is per app: shop2's dump is not one of shop's.
    assert len(list(other.iterdir())) == 2
    assert nightly.stat().st_mode & 0o777 == 0o700


def test_a_failed_dump_is_removed_and_nothing_is_rotated(
    backup, tmp_path, monkeypatch, capsys
):
    nightly = configure(tmp_path, "shop")
    nightly.mkdir(parents=True)
    old = [f"shop-2000010{day}T030000Z.dump" for day in range(1, 4)]
    for name in old:
        (nightly / name).write_text("old")
    monkeypatch.setitem(
        backup.DUMPERS, "postgresql", (fake_dumper([], fail=True), "dump")
    )

    assert (
        backup.main(["--apps-file", str(tmp_path / "backups.json"), "--keep", "1"]) == 1
    )

    assert sorted(path.name for path in nightly.iterdir()) == old
    assert "shop: backup failed: disk full" in capsys.readouterr().out


PG_DUMP_FULL = (
    "runuser exited with 1: pg_dump: error: could not write to output file: "
    "No space left on device"
)
# MariaDB's mysqldump names the errno by its number (seen with 10.11 on Debian 12).
MYSQLDUMP_FULL = "mysqldump exited with 5: mysqldump: Got errno 28 on write"


@pytest.mark.parametrize(
    ("engine", "error"),
    [
        ("postgresql", PG_DUMP_FULL),
        ("mysql", MYSQLDUMP_FULL),
        # os.fsync of the dump, in the script itself
        ("postgresql", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))),
    ],
    ids=["pg_dump", "mysqldump", "fsync"],
)
def test_a_full_disk_costs_no_good_dump_and_is_named(
    backup, tmp_path, monkeypatch, capsys, engine, error
):
    nightly = configure(tmp_path, "shop", engine=engine)
    nightly.mkdir(parents=True)
    suffix = backup.DUMPERS[engine][1]
    good = [f"shop-2000010{day}T030000Z.{suffix}" for day in range(1, 4)]
    for name in good:
        (nightly / name).write_text("good")

    def dump_until_the_disk_is_full(database, path):
        Path(path).write_text("half a dump")
        raise backup.BackupError(error) if isinstance(error, str) else error

    monkeypatch.setitem(backup.DUMPERS, engine, (dump_until_the_disk_is_full, suffix))

    assert (
        backup.main(["--apps-file", str(tmp_path / "backups.json"), "--keep", "3"]) == 1
    )

    assert sorted(path.name for path in nightly.iterdir()) == good
    listed = subprocess.run(
        ["df", "--output=target", str(nightly)],
        capture_output=True,
        text=True,
        check=True,
    )
    mount = listed.stdout.splitlines()[1].strip()
    assert capsys.readouterr().out.splitlines() == [
        f"shop: backup failed: no space left on {mount} ({error}); the new dump "
        f"removed, 3 earlier dumps kept (newest shop-20000103T030000Z.{suffix})",
        "failed: shop",
    ]


def test_apps_without_a_database_are_skipped(backup, tmp_path, monkeypatch):
    configure(tmp_path, "static", engine="none")
    calls = []
    monkeypatch.setitem(backup.DUMPERS, "postgresql", (fake_dumper(calls), "dump"))
    assert backup.main(["--apps-file", str(tmp_path / "backups.json")]) == 0
    assert calls == []
    assert not (tmp_path / "backups" / "static").exists()


def test_unknown_app_fails(backup, tmp_path, capsys):
    configure(tmp_path, "shop")
    apps_file = tmp_path / "backups.json"
    assert backup.main(["--apps-file", str(apps_file), "blog"]) == 1
    assert capsys.readouterr().out == f"error: not in {apps_file}: blog\n"


def test_an_app_without_an_env_file_is_dumped_by_its_settings(
    backup, tmp_path, monkeypatch
):
    """On the db minion of a fleet the app does not run: no env file, its
    database dumped as the settings say (locally, as postgres)."""
    nightly = configure(tmp_path, "shop", env=False)
    calls = []
    monkeypatch.setitem(backup.DUMPERS, "postgresql", (fake_dumper(calls), "dump"))
    assert backup.main(["--apps-file", str(tmp_path / "backups.json")]) == 0
    assert [database for database, _ in calls] == [
        {"engine": "postgresql", "host": "localhost", "name": "shop", "user": "shop"}
    ]
    assert len(list(nightly.iterdir())) == 1
    # the app has no group there: its status is for all to read
    status, path = status_of(tmp_path, "shop")
    assert status["result"] == "ok"
    assert path.stat().st_mode & 0o777 == 0o644


def test_database_url_gives_the_credentials(backup, tmp_path):
    configure(
        tmp_path,
        "shop",
        engine="mysql",
        url="mysql://shop_rw:p%40ss%2Fword@db.internal:3307/shop_prod",
    )
    app = listed(tmp_path, "shop")
    assert backup.database_settings(app) == {
        "engine": "mysql",
        "host": "db.internal",
        "port": 3307,
        "name": "shop_prod",
        "user": "shop_rw",
        "password": "p@ss/word",
    }


def test_option_like_database_name_is_refused(backup, tmp_path):
    configure(tmp_path, "shop", url="postgres://shop:x@localhost:5432/--help")
    app = listed(tmp_path, "shop")
    with pytest.raises(backup.BackupError, match="database name"):
        backup.database_settings(app)


def status_of(root, name):
    path = root / "lib" / "backup-status" / f"{name}.json"
    return json.loads(path.read_text()), path


TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def test_each_run_leaves_a_status_the_apps_group_may_read(
    backup, tmp_path, monkeypatch
):
    nightly = configure(tmp_path, "shop")
    configure(tmp_path, "static", engine="none")
    monkeypatch.setitem(backup.DUMPERS, "postgresql", (fake_dumper([]), "dump"))

    assert backup.main(["--apps-file", str(tmp_path / "backups.json")]) == 0

    status, path = status_of(tmp_path, "shop")
    (newest,) = [entry.name for entry in nightly.iterdir()]
    stamp = re.fullmatch(r"shop-([0-9]{8})T([0-9]{6})Z\.dump", newest)
    day, clock = stamp.groups()
    assert status == {
        "app": "shop",
        "time": status["time"],
        "result": "ok",
        "error": None,
        "newest": newest,
        "newest_time": f"{day[:4]}-{day[4:6]}-{day[6:]}T"
        f"{clock[:2]}:{clock[2:4]}:{clock[4:]}Z",
    }
    assert TIME.fullmatch(status["time"]) and status["time"] >= status["newest_time"]
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.stat().st_gid == os.getgid()
    # Made for it, each directory readable by the app's user.
    for directory in (path.parent, path.parent.parent):
        assert directory.stat().st_mode & 0o777 == 0o755
    # Written whole under another name: nothing else left beside it.
    assert sorted(entry.name for entry in path.parent.iterdir()) == ["shop.json"]
    # An app without a database has no backup and no status.
    assert not (path.parent / "static.json").exists()


def test_a_failed_run_records_why_and_the_newest_good_dump(
    backup, tmp_path, monkeypatch
):
    nightly = configure(tmp_path, "shop")
    nightly.mkdir(parents=True)
    for day in (1, 2):
        (nightly / f"shop-2000010{day}T030000Z.dump").write_text("good")
    monkeypatch.setitem(
        backup.DUMPERS, "postgresql", (fake_dumper([], fail=True), "dump")
    )
    # The status of the run before, replaced whole.
    status_dir = tmp_path / "lib" / "backup-status"
    status_dir.mkdir(parents=True)
    (status_dir / "shop.json").write_text('{"result": "ok"}')

    assert backup.main(["--apps-file", str(tmp_path / "backups.json")]) == 1

    status, _ = status_of(tmp_path, "shop")
    assert status == {
        "app": "shop",
        "time": status["time"],
        "result": "failed",
        # Why, without the log's account of the dumps kept.
        "error": "disk full",
        "newest": "shop-20000102T030000Z.dump",
        "newest_time": "2000-01-02T03:00:00Z",
    }


def test_a_failure_before_any_dump_is_recorded_too(backup, tmp_path):
    configure(tmp_path, "shop", url="postgres://shop:x@localhost:5432/--help")
    assert backup.main(["--apps-file", str(tmp_path / "backups.json")]) == 1
    status, _ = status_of(tmp_path, "shop")
    assert (status["result"], status["error"], status["newest"]) == (
        "failed",
        "database name unknown",
        None,
    )
    assert status["newest_time"] is None


def test_a_status_that_cannot_be_written_fails_the_run(
    backup, tmp_path, monkeypatch, capsys
):
    configure(tmp_path, "shop")
    monkeypatch.setitem(backup.DUMPERS, "postgresql", (fake_dumper([]), "dump"))
    apps_file = tmp_path / "backups.json"
    app = listed(tmp_path, "shop")
    app["group"] = "no-such-group-0f3a"
    apps_file.write_text(json.dumps([app]))

    assert backup.main(["--apps-file", str(tmp_path / "backups.json")]) == 1

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("shop: ") and lines[0].endswith("1 kept, 0 removed")
    assert lines[1:] == [
        'shop: its status for monitoring not written: KeyError("getgrnam(): name '
        "not found: 'no-such-group-0f3a'\")",
        "failed: shop",
    ]
    assert not (tmp_path / "lib" / "backup-status" / "shop.json").exists()


@pytest.mark.parametrize(
    ("host", "credentials", "env"),
    [
        # the server's root over the socket: a db minion has no app credentials
        ("localhost", [], None),
        (
            "db.internal",
            ["--host=db.internal", "--port=3306", "--user=shop"],
            {"MYSQL_PWD": "pw"},
        ),
    ],
    ids=["local", "remote"],
)
def test_a_mysql_database_is_dumped_by_root_here_and_by_the_app_elsewhere(
    backup, tmp_path, monkeypatch, host, credentials, env
):
    ran = []

    def run(argv, output=None, env=None):
        ran.append((argv, env))
        Path(path).write_text("-- MariaDB dump\n-- Dump completed on 2026-12-06\n")

    monkeypatch.setattr(backup, "run", run)
    path = str(tmp_path / "shop.sql")
    database = {"engine": "mysql", "host": host, "port": None, "name": "shop"}
    backup.dump_mysql({**database, "user": "shop", "password": "pw"}, path)
    dump = ["mysqldump", "--single-transaction", "--routines", "--triggers"]
    dump += [f"--result-file={path}", "--databases", "shop"]
    assert ran == [(dump + credentials, env)]
