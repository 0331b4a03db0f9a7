"""A full disk in the middle of a release: the build's and the backup's failures
name the filesystem that is full, and a dump cut short is not left to pass for one
to restore. The kernel's own ENOSPC is tested on a real host by
test/integration/test_disk_full.py."""

import errno
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import djangoapp_build
import djangoapp_common
import djangoapp_django
import pytest
from djangoapp_common import StepFailed

PG_DUMP_FULL = (
    "pg_dump failed (exit 1): pg_dump: error: could not write to output file: "
    "No space left on device"
)
# MariaDB 10.11's mysqldump (and mariadb-dump) on a full filesystem, as seen on a
# Debian 12 host: the errno's number, not its words.
MYSQLDUMP_FULL = "mysqldump failed (exit 5): mysqldump: Got errno 28 on write"


def mount_of(path: Path) -> str:
    """The mount point df names for ``path``'s filesystem."""
    while not path.exists():
        path = path.parent
    listed = subprocess.run(
        ["df", "--output=target", str(path)], capture_output=True, text=True, check=True
    )
    return listed.stdout.splitlines()[1].strip()


@pytest.fixture
def sixteen_mib_all_used(monkeypatch):
    monkeypatch.setattr(
        djangoapp_common.os,
        "statvfs",
        lambda path: SimpleNamespace(f_bavail=0, f_frsize=4096, f_blocks=4096),
    )


class DumpCutShort:
    """A host whose dump tool writes part of the dump, then fails with ``message``."""

    def __init__(self, message):
        self.message = message

    def check(self, step, argv, **kwargs):
        path = next(
            arg.split("=", 1)[1]
            for arg in argv
            if arg.startswith(("--file=", "--result-file="))
        )
        Path(path).write_bytes(b"part of a dump")
        raise StepFailed(step, self.message)


ENGINES = {
    "postgresql": ("postgres://shop:pw@localhost:5432/shop", ".dump"),
    "mysql": ("mysql://shop:pw@localhost:3306/shop", ".sql"),
}


def backup_of(tmp_path, host, engine="postgresql"):
    cfg = {
        "database": {"engine": engine, "name": "shop", "user": "shop"},
        "backup_dir": str(tmp_path / "backups" / "shop"),
    }
    env = {"DATABASE_URL": ENGINES[engine][0]}
    return djangoapp_django.backup_database(cfg, host, env, "v1.1.0-0123abcd")


@pytest.mark.parametrize(
    ("engine", "tool_says"),
    [("postgresql", PG_DUMP_FULL), ("mysql", MYSQLDUMP_FULL)],
    ids=["pg_dump", "mysqldump"],
)
def test_a_backup_on_a_full_disk_names_it_and_leaves_no_partial_dump(
    tmp_path, sixteen_mib_all_used, engine, tool_says
):
    with pytest.raises(StepFailed) as failed:
        backup_of(tmp_path, DumpCutShort(tool_says), engine)
    dump = tmp_path / "backups" / "shop" / f"v1.1.0-0123abcd{ENGINES[engine][1]}"
    assert failed.value.step == "backup"
    assert failed.value.message == (
        f"no space left on {mount_of(dump)} (the filesystem of {dump}: "
        f"0.0 MiB free of 16.0 MiB)\n{tool_says}"
    )
    assert os.listdir(dump.parent) == []


@pytest.mark.parametrize(
    ("engine", "refused"),
    [
        ("postgresql", "pg_dump failed (exit 1): connection to server refused"),
        # Another errno of the same message is not a full disk (5: EIO).
        ("mysql", "mysqldump failed (exit 5): mysqldump: Got errno 5 on write"),
    ],
    ids=["pg_dump", "mysqldump"],
)
def test_a_backup_failing_for_another_reason_says_its_own_words(
    tmp_path, engine, refused
):
    with pytest.raises(StepFailed) as failed:
        backup_of(tmp_path, DumpCutShort(refused), engine)
    assert (failed.value.step, failed.value.message) == ("backup", refused)
    assert os.listdir(tmp_path / "backups" / "shop") == []


class ExportOnFullDisk:
    def export(self, sha, destination):
        raise StepFailed(
            "build",
            f"tar failed (exit 2): {destination}/manage.py: "
            "Cannot write: No space left on device",
        )


def test_a_build_on_a_full_disk_names_it(tmp_path, sixteen_mib_all_used):
    rdir = tmp_path / "releases" / "v1.2.0-89abcdef"
    builder = djangoapp_build.Builder({}, None, [], str(rdir))
    with pytest.raises(StepFailed) as failed:
        builder.build(ExportOnFullDisk(), "89abcdef")
    first_line, detail = failed.value.message.split("\n", 1)
    assert failed.value.step == "build"
    assert first_line == (
        f"no space left on {mount_of(rdir)} (the filesystem of {rdir}: "
        "0.0 MiB free of 16.0 MiB)"
    )
    written = rdir / "src" / "manage.py"
    assert detail == (
        f"tar failed (exit 2): {written}: Cannot write: No space left on device"
    )


def test_the_engines_own_enospc_becomes_a_failed_step(tmp_path, sixteen_mib_all_used):
    path = tmp_path / "releases" / "v1.2.0-89abcdef" / "release.json"
    with (
        pytest.raises(StepFailed) as failed,
        djangoapp_common.naming_a_full_disk("preflight", str(path)),
    ):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    assert failed.value.step == "preflight"
    assert failed.value.message == (
        f"no space left on {mount_of(path)} (the filesystem of {path}: "
        f"0.0 MiB free of 16.0 MiB)\n[Errno 28] No space left on device: '{path}'"
    )


def test_other_failures_pass_unchanged(tmp_path):
    with (
        pytest.raises(OSError) as failed,
        djangoapp_common.naming_a_full_disk("build", str(tmp_path)),
    ):
        raise PermissionError(errno.EACCES, "Permission denied")
    assert failed.value.errno == errno.EACCES
