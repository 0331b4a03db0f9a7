"""A full disk, on a host of its own with one app on PostgreSQL (shop, under
Supervisor) and the nightly backups on. Two small filesystems (tmpfs, so that the
kernel itself answers ENOSPC) are mounted in the host before its first converge:
one over shop's releases directory, one over its backup directory. A test fills
one with a file, leaving a little room or none, and removes the file afterwards.

Under load: a release whose backup before migrating cannot be written stops at the
backup, the schema untouched; a release whose build fills the disk stops at the
build, its half-built release removed; once space is freed the same release goes
through, its backup taken. Then the nightly backup on a full disk keeps the dumps it
has, and the monitoring check `backup`, asked through NRPE from this machine, says
so. The tests run in file order, each from where the one before left the host, and
print their figures (docs/reliability.md). The slot is $DJANGOAPP_DISK_SLOT, by
default the shared host's slot plus 65.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from secondhost import SecondHost, bootable_testhost, converged_second_host, slot_from
from test_combinations import postgresql_app_pillar
from test_monitoring_agents import check_nrpe

import demorepo
from loadgen import Load

pytestmark = pytest.mark.integration

HOSTNAME = "djangoapp-test-disk"
APP = "shop"
RELEASES = f"/srv/djangoapp/{APP}/releases"
BACKUPS = f"/var/backups/djangoapp/{APP}"
NIGHTLY = f"{BACKUPS}/nightly"
RELEASES_MIB = 700
BACKUPS_MIB = 16
# What the filler leaves free on the releases filesystem: room for the code and an
# empty virtualenv, not for Django.
HEADROOM_MIB = 8
# Hidden: the engine's listings of releases leave dot-names out.
FILLER = ".filler"
CLIENTS = 6
TRASH_TIMEOUT = 60.0
MIB = 1024 * 1024
STATUS = f"/var/lib/djangoapp/backup-status/{APP}.json"
# The check's threshold: defaults.yaml's max_age_hours (26), in seconds.
MAX_AGE_S = 26 * 3600
OK, WARNING, CRITICAL = 0, 1, 2


def disk_pillar(module) -> dict:
    return postgresql_app_pillar(
        module,
        APP,
        "shop-db-91d3",
        backups={"enabled": True, "keep": 3},
        # The backup check, asked from this machine.
        monitoring={"nrpe": {"enabled": True, "allowed_hosts": [module.MASTER_IP]}},
    )


def mount_small_filesystems(host) -> None:
    for path, mib, mode in (
        (RELEASES, RELEASES_MIB, "0755"),
        (BACKUPS, BACKUPS_MIB, "0700"),
    ):
        host.exec(["mkdir", "-p", path])
        host.exec(
            ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode={mode}", "tmpfs", path]
        )


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    module = bootable_testhost(slot_from("DJANGOAPP_DISK_SLOT", 65))
    work = tmp_path_factory.mktemp("disk")
    demorepo.build_repo(work / "git" / "demo.git")
    with converged_second_host(
        module,
        work,
        HOSTNAME,
        disk_pillar(module),
        before_apply=mount_small_filesystems,
    ) as host:
        yield host.converged()


def run(host: SecondHost, *argv: str, check: bool = True):
    return host.host.exec(list(argv), check=check)


def free_bytes(host: SecondHost, path: str) -> int:
    blocks, size = run(host, "stat", "-f", "-c", "%a %S", path).stdout.split()
    return int(blocks) * int(size)


def fill(host: SecondHost, path: str, leave: int = 0) -> None:
    """A file on ``path``'s filesystem that leaves ``leave`` bytes free."""
    run(
        host, "fallocate", "-l", str(free_bytes(host, path) - leave), f"{path}/{FILLER}"
    )
    assert free_bytes(host, path) == leave


def free(host: SecondHost, path: str) -> None:
    run(host, "rm", "-f", f"{path}/{FILLER}")


def live_release(host: SecondHost) -> dict:
    text = run(host, "cat", f"/srv/djangoapp/{APP}/current/release.json").stdout
    return json.loads(text)


def releases_on_disk(host: SecondHost) -> list[str]:
    names = run(host, "ls", "-A", RELEASES).stdout.split()
    return sorted(name for name in names if not name.startswith("."))


def trash_on_disk(host: SecondHost) -> list[str]:
    names = run(host, "ls", "-A", RELEASES).stdout.split()
    return [name for name in names if name.startswith(".trash")]


def last_ledger_entry(host: SecondHost) -> dict:
    lines = run(host, "cat", f"/srv/djangoapp/{APP}/ledger.jsonl").stdout.splitlines()
    return json.loads(lines[-1])


def psql(host: SecondHost, sql: str) -> list[str]:
    result = run(
        host, "runuser", "-u", "postgres", "--", "psql", "-d", APP, "-tA", "-c", sql
    )
    return result.stdout.split()


def schema(host: SecondHost) -> dict:
    return {
        "migrations": psql(
            host, "SELECT name FROM django_migrations WHERE app = 'notes' ORDER BY id"
        ),
        "columns": psql(
            host,
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'notes_note' ORDER BY column_name",
        ),
    }


def release_under_load(host: SecondHost, version: str) -> tuple[int, dict, Load]:
    load = Load(host.ip, 80, "/", f"{APP}.test", clients=CLIENTS)
    with load:
        rc, release, _ = host.salt(
            "djangoapp.release", f"version={version}", f"app={APP}"
        )
    return rc, release, load


def no_space_line(mount: str, path: str, size_mib: int) -> re.Pattern:
    """The first line of an error that names the full filesystem."""
    return re.compile(
        rf"no space left on {re.escape(mount)} \(the filesystem of {re.escape(path)}: "
        rf"[0-9]+\.[0-9] MiB free of {size_mib}\.0 MiB\)"
    )


def test_no_migration_runs_without_its_backup(disk):
    before = live_release(disk)
    assert before["version"] == "v1.0.0"
    schema_before = schema(disk)
    assert schema_before["migrations"] == ["0001_initial"]
    dumps_before = run(disk, "ls", "-A", BACKUPS).stdout.split()
    fill(disk, BACKUPS)
    try:
        rc, release, load = release_under_load(disk, "v1.1.0")
    finally:
        free(disk, BACKUPS)
    print(f"backup on a full disk: {load.result}; failed after {release['seconds']} s")
    print(f"error: {release['error']}")
    assert rc == 1
    assert release["failed_step"] == "backup"
    assert release["pending_migrations"] == ["notes.0002_note_author"]
    assert release["migrations_ran"] is False
    assert release["backup"] is None
    first_line, _ = release["error"].split("\n", 1)
    dump = f"{BACKUPS}/{release['id']}.dump"
    assert no_space_line(BACKUPS, dump, BACKUPS_MIB).fullmatch(first_line), first_line
    assert release["restored"] == [
        f"current unchanged ({before['id']})",
        f"removed the failed release {release['id']}",
    ]
    # Nothing half-written is left to pass for a dump to restore.
    assert run(disk, "ls", "-A", BACKUPS).stdout.split() == dumps_before
    assert schema(disk) == schema_before
    assert live_release(disk)["id"] == before["id"]
    assert release["id"] not in releases_on_disk(disk)
    assert load.result.failed == 0, load.result.failures
    assert load.result.succeeded > 0
    entry = last_ledger_entry(disk)
    assert (entry["status"], entry["failed_step"]) == ("failed", "backup")


def test_a_build_that_fills_the_disk_stops_before_the_switch(disk):
    before = live_release(disk)
    on_disk_before = releases_on_disk(disk)
    fill(disk, RELEASES, leave=HEADROOM_MIB * MIB)
    try:
        rc, release, load = release_under_load(disk, "v1.2.0")
        print(
            f"build on a full disk: {load.result}; failed after {release['seconds']} s"
        )
        print(f"error: {release['error']}")
        assert rc == 1
        assert release["failed_step"] == "build"
        first_line, _ = release["error"].split("\n", 1)
        rdir = f"{RELEASES}/{release['id']}"
        assert no_space_line(RELEASES, rdir, RELEASES_MIB).fullmatch(first_line), (
            first_line
        )
        assert release["restored"] == [
            f"current unchanged ({before['id']})",
            f"removed the failed release {release['id']}",
        ]
        assert releases_on_disk(disk) == on_disk_before
        assert live_release(disk)["id"] == before["id"]
        assert load.result.failed == 0, load.result.failures
        assert load.result.succeeded > 0
        entry = last_ledger_entry(disk)
        assert (entry["status"], entry["failed_step"]) == ("failed", "build")
        # The half-built files go in the background: the space comes back.
        deadline = time.monotonic() + TRASH_TIMEOUT
        while trash_on_disk(disk) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert trash_on_disk(disk) == []
        assert free_bytes(disk, RELEASES) == HEADROOM_MIB * MIB
    finally:
        free(disk, RELEASES)

    rc, release, load = release_under_load(disk, "v1.2.0")
    print(
        f"the same release once space is freed: {load.result}; {release['seconds']} s"
    )
    assert rc == 0, release
    assert live_release(disk)["version"] == "v1.2.0"
    assert release["backup"] == f"{BACKUPS}/{release['id']}.dump"
    assert run(disk, "pg_restore", "--list", release["backup"]).rc == 0
    assert schema(disk)["migrations"] == [
        "0001_initial",
        "0002_note_author",
        "0003_note_pinned",
    ]
    assert load.result.failed == 0, load.result.failures


def nightly_dumps(host: SecondHost) -> list[str]:
    return sorted(run(host, "ls", "-A", NIGHTLY).stdout.split())


def run_nightly_backup(host: SecondHost) -> tuple[int, list[str]]:
    """``systemctl start`` of the backup service: its exit code, and the lines this
    run wrote on its stdout (the journal also has runuser's PAM lines)."""
    started = run(host, "systemctl", "start", "djangoapp-backup.service", check=False)
    invocation = run(
        host, "systemctl", "show", "-p", "InvocationID", "--value", "djangoapp-backup"
    ).stdout.strip()
    run(host, "journalctl", "--sync")
    journal = run(
        host,
        "journalctl",
        "-o",
        "cat",
        "--no-pager",
        f"_SYSTEMD_INVOCATION_ID={invocation}",
        "_TRANSPORT=stdout",
    )
    return started.rc, journal.stdout.splitlines()


def backup_check(host: SecondHost) -> tuple[int, str]:
    """The check `backup` of the app, as Nagios asks NRPE for it."""
    return check_nrpe(host.ip, f"check_djangoapp_{APP}_backup")


def ok_line(newest: str) -> re.Pattern:
    """The check's line when ``newest`` is a good dump of the last minutes."""
    return re.compile(
        rf"BACKUP OK - newest good dump {re.escape(newest)}, ([0-9]+) min old"
        rf" \| age=([0-9]+)s;;{MAX_AGE_S};0"
    )


def assert_minutes_old(minutes: str, seconds: str) -> None:
    assert int(seconds) < 600 and int(minutes) == int(seconds) // 60


def stamp_time(dump: str) -> str:
    """The UTC time in a nightly dump's name, as the status writes it."""
    day, clock = re.fullmatch(r".*-([0-9]{8})T([0-9]{6})Z\.dump", dump).groups()
    return f"{day[:4]}-{day[4:6]}-{day[6:]}T{clock[:2]}:{clock[2:4]}:{clock[4:]}Z"


def test_the_nightly_backup_on_a_full_disk_keeps_its_dumps(disk):
    # Backups on, no run yet: the timer's first is to come.
    assert backup_check(disk) == (
        WARNING,
        f"BACKUP WARNING - no nightly backup of {APP} has run yet "
        "(djangoapp-backup.timer; one now: systemctl start djangoapp-backup.service)",
    )
    for _ in range(2):
        rc, _ = run_nightly_backup(disk)
        assert rc == 0
    good = nightly_dumps(disk)
    assert len(good) == 2
    rc, line = backup_check(disk)
    print(f"backup check after two good runs: {rc} {line}")
    shown = ok_line(good[-1]).fullmatch(line)
    assert rc == OK and shown, line
    assert_minutes_old(*shown.groups())
    fill(disk, BACKUPS)
    try:
        rc, journal = run_nightly_backup(disk)
        after = nightly_dumps(disk)
    finally:
        free(disk, BACKUPS)
    print("nightly backup on a full disk:", *journal, sep="\n  ")
    assert rc != 0
    result = run(
        disk, "systemctl", "show", "-p", "Result", "--value", "djangoapp-backup"
    )
    assert result.stdout.strip() == "exit-code"
    assert after == good
    why = (
        f"no space left on {BACKUPS} (runuser exited with 1: pg_dump: error: "
        "could not write to output file: No space left on device)"
    )
    assert journal == [
        f"{APP}: backup failed: {why}; the new dump removed, 2 earlier dumps kept "
        f"(newest {good[-1]})",
        f"failed: {APP}",
    ]
    # What the run left for the check: root's, readable by the app's group only.
    status = json.loads(run(disk, "cat", STATUS).stdout)
    assert status == {
        "app": APP,
        "time": status["time"],
        "result": "failed",
        "error": why,
        "newest": good[-1],
        "newest_time": stamp_time(good[-1]),
    }
    assert run(disk, "stat", "-c", "%a %U %G", STATUS).stdout.split() == [
        "640",
        "root",
        APP,
    ]
    rc, line = backup_check(disk)
    print(f"backup check after the failed run: {rc} {line}")
    shown = re.fullmatch(
        rf"BACKUP CRITICAL - the nightly backup of {APP} failed at "
        rf"{re.escape(status['time'])}: {re.escape(why)}; newest good dump "
        rf"{re.escape(good[-1])}, ([0-9]+) min old \| age=([0-9]+)s;;{MAX_AGE_S};0",
        line,
    )
    assert rc == CRITICAL and shown, line
    assert_minutes_old(*shown.groups())

    rc, journal = run_nightly_backup(disk)
    assert rc == 0
    assert nightly_dumps(disk)[:2] == good
    assert len(nightly_dumps(disk)) == 3
    rc, line = backup_check(disk)
    print(f"backup check after the next good run: {rc} {line}")
    shown = ok_line(nightly_dumps(disk)[-1]).fullmatch(line)
    assert rc == OK and shown, line
    assert_minutes_old(*shown.groups())
