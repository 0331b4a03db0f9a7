#!/usr/bin/python3
"""Nightly database dumps of the djangoapp apps, rotated.

    backup-databases [--apps-file /etc/djangoapp/backups.json] [--keep 7] [APP ...]

For each app of the apps file (the formula writes it: on one host every app with
a database, in a fleet the db minion's), or each APP named, whose database is
PostgreSQL or MySQL/MariaDB: dumps it into
<backup_dir>/nightly/<app>-<UTC time>.dump (pg_dump custom format, checked with
pg_restore --list) or .sql (mysqldump, checked for its completion trailer), then
removes that app's oldest nightly dumps beyond --keep. A dump that fails is
deleted and nothing of that app is rotated away (a full disk never costs a good
dump); the log says why, naming the filesystem when it is full, and how many
dumps are kept. The exit status is 1 when any app failed.

Each app's run is recorded in its `backup_status` file (JSON: when the run
ended, `ok` or `failed`, why, the newest good dump and its time), readable by its
`group` (the monitoring check `backup` reads it as the app's user), or by all when
the app has no group here (a db minion of a fleet).

A local database is dumped by the server's own superuser over the local socket:
PostgreSQL as the postgres user (peer authentication), MariaDB as root
(unix_socket authentication); a db minion of a fleet has no app credentials. Any
other database is dumped with the app's own credentials, read from its
`env_file` (DATABASE_URL) and passed to the dump tool in its environment, never
on its command line.
"""

import argparse
import contextlib
import errno
import fcntl
import grp
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import djangoapp_database  # installed beside this script

SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
LOCK_FILE = "/run/djangoapp-backup.lock"
DUMP_TIMEOUT = 6 * 3600
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
NO_SPACE = os.strerror(errno.ENOSPC)  # what most tools say: "No space left on device"
# mysqldump and mariadb-dump give the number only: "mysqldump: Got errno 28 on write".
NO_SPACE_ERRNO = f"Got errno {errno.ENOSPC} on write"


class BackupError(Exception):
    pass


class DumpFailed(BackupError):
    """A dump that failed: why (``reason``), and the good dumps kept."""

    def __init__(self, reason, kept):
        newest = f" (newest {kept[-1]})" if kept else ""
        super().__init__(
            f"{reason}; the new dump removed, {len(kept)} earlier dumps kept{newest}"
        )
        self.reason = reason


def log(message):
    print(message, flush=True)


def configured_apps(apps_file, names):
    """The apps of the apps file, in name order, or the ones named."""
    with open(apps_file, encoding="utf-8") as handle:
        listed = json.load(handle)
    apps = sorted(
        (app for app in listed if not names or app["name"] in names),
        key=lambda app: app["name"],
    )
    unknown = sorted(set(names) - {app["name"] for app in apps})
    if unknown:
        raise BackupError(f"not in {apps_file}: {', '.join(unknown)}")
    return apps


def database_settings(app):
    """The app's database settings, with DATABASE_URL from its env file over them
    (none, or an unreadable one, counts as one without DATABASE_URL)."""
    environment = {}
    if app.get("env_file"):
        try:
            environment = djangoapp_database.read_environment(app["env_file"])
        except (OSError, ValueError):
            environment = {}
    try:
        return djangoapp_database.database_settings(app, environment)
    except djangoapp_database.DatabaseUnknown as error:
        raise BackupError(str(error)) from error


def run(argv, output=None, env=None):
    """Run argv with a clean environment; returns its stdout unless sent to output."""
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=output if output is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": SAFE_PATH, "LC_ALL": "C", **(env or {})},
        cwd="/",
        timeout=DUMP_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip()
        raise BackupError(f"{argv[0]} exited with {result.returncode}: {stderr}")
    return result.stdout.decode("utf-8", "replace") if output is None else None


def dump_postgresql(database, path):
    port = f"--port={database.get('port') or 5432}"
    with open(path, "wb") as output:
        if database["host"] in LOCAL_HOSTS:
            run(
                ["runuser", "-u", "postgres", "--", "pg_dump", "--format=custom"]
                + [port, f"--dbname={database['name']}"],
                output=output,
            )
        else:
            run(
                ["pg_dump", "--format=custom", "--no-password"]
                + [f"--host={database['host']}", port]
                + [f"--username={database['user']}", f"--dbname={database['name']}"],
                output=output,
                env={"PGPASSWORD": database.get("password") or ""},
            )
        os.fsync(output.fileno())
    listing = run(["pg_restore", "--list", path])
    if "Archive created at" not in listing:
        raise BackupError(f"pg_restore --list cannot read {path}")


def dump_mysql(database, path):
    argv = ["mysqldump", "--single-transaction", "--routines", "--triggers"]
    argv += [f"--result-file={path}", "--databases", database["name"]]
    if database["host"] in LOCAL_HOSTS:
        run(argv)
    else:
        run(
            argv
            + [f"--host={database['host']}", f"--port={database.get('port') or 3306}"]
            + [f"--user={database['user']}"],
            env={"MYSQL_PWD": database.get("password") or ""},
        )
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - 512))
        if b"-- Dump completed" not in handle.read():
            raise BackupError(f"{path} has no '-- Dump completed' trailer")


DUMPERS = {"postgresql": (dump_postgresql, "dump"), "mysql": (dump_mysql, "sql")}


def nightly_dumps(directory, name):
    """The app's nightly dumps in directory, oldest first."""
    pattern = re.compile(rf"^{re.escape(name)}-[0-9]{{8}}T[0-9]{{6}}Z\.(dump|sql)$")
    return sorted(entry for entry in os.listdir(directory) if pattern.match(entry))


def mount_point(path):
    """The mount point of the filesystem that holds path."""
    path = os.path.abspath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def why(error, directory):
    """Why a dump failed: the filesystem first when it is full."""
    reason = str(error)
    if NO_SPACE in reason or NO_SPACE_ERRNO in reason:
        reason = f"no space left on {mount_point(directory)} ({reason})"
    return reason


def engine_of(app):
    return (app.get("database") or {}).get("engine", "none")


def nightly_dir(app):
    return os.path.join(app["backup_dir"], "nightly")


def back_up(app, keep):
    name = app["name"]
    dumper, suffix = DUMPERS[engine_of(app)]
    database = database_settings(app)
    directory = nightly_dir(app)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    while True:
        stamp = time.strftime(STAMP_FORMAT, time.gmtime())
        path = os.path.join(directory, f"{name}-{stamp}.{suffix}")
        if not os.path.exists(path):
            break
        time.sleep(1)
    partial = path + ".partial"
    started = time.monotonic()
    try:
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        dumper(database, partial)
        os.rename(partial, path)
    except (BackupError, OSError, subprocess.TimeoutExpired) as error:
        kept = nightly_dumps(directory, name)
        raise DumpFailed(why(error, directory), kept) from error
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    dumps = nightly_dumps(directory, name)
    removed = dumps[:-keep]
    for old in removed:
        os.unlink(os.path.join(directory, old))
    log(
        f"{name}: {path} ({os.path.getsize(path)} bytes, "
        f"{time.monotonic() - started:.1f} s); {len(dumps) - len(removed)} kept, "
        f"{len(removed)} removed"
    )


def dump_time(name):
    """The UTC time in a nightly dump's name, as TIME_FORMAT."""
    stamp = re.search(r"([0-9]{8}T[0-9]{6}Z)\.[a-z]+$", name).group(1)
    return time.strftime(TIME_FORMAT, time.strptime(stamp, STAMP_FORMAT))


def readable_directory(path):
    """``path`` made if missing, it and each directory made for it mode 0755 (the
    app's user goes through them), whatever this process's umask."""
    umask = os.umask(0o022)
    try:
        os.makedirs(path, exist_ok=True)
    finally:
        os.umask(umask)


def write_status(app, error):
    """
    The app's last run, for the monitoring check `backup`: when it ended, its
    result, why it failed (None if it did not) and the newest good dump with its
    time. Written whole under another name, then renamed over the last one;
    mode 0640, group the app's (0644 where the app has none).
    """
    path = app["backup_status"]
    directory = nightly_dir(app)
    dumps = nightly_dumps(directory, app["name"]) if os.path.isdir(directory) else []
    newest = dumps[-1] if dumps else None
    status = {
        "app": app["name"],
        "time": time.strftime(TIME_FORMAT, time.gmtime()),
        "result": "failed" if error else "ok",
        "error": error,
        "newest": newest,
        "newest_time": dump_time(newest) if newest else None,
    }
    gid = grp.getgrnam(app["group"]).gr_gid if app["group"] else -1
    readable_directory(os.path.dirname(path))
    handle, temporary = tempfile.mkstemp(
        prefix=f".{app['name']}.", dir=os.path.dirname(path)
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as output:
            json.dump(status, output, indent=2, sort_keys=True)
            output.write("\n")
            output.flush()
            os.fsync(output.fileno())
        os.chown(temporary, -1, gid)
        os.chmod(temporary, 0o640 if app["group"] else 0o644)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps-file", default="/etc/djangoapp/backups.json")
    parser.add_argument("--keep", type=int, default=7)
    parser.add_argument("apps", nargs="*", metavar="APP")
    args = parser.parse_args(argv)
    if args.keep < 1:
        parser.error("--keep must be at least 1")
    os.umask(0o077)
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            apps = configured_apps(args.apps_file, args.apps)
        except (BackupError, OSError, ValueError) as error:
            log(f"error: {error}")
            return 1
        failed = []
        for app in apps:
            name = app["name"]
            if engine_of(app) not in DUMPERS:
                log(f"{name}: no database to dump (engine {engine_of(app)})")
                continue
            error = None
            try:
                back_up(app, args.keep)
            except (BackupError, OSError, subprocess.TimeoutExpired) as exc:
                log(f"{name}: backup failed: {exc}")
                failed.append(name)
                error = getattr(exc, "reason", str(exc))
            try:
                write_status(app, error)
            except (KeyError, OSError) as exc:
                log(f"{name}: its status for monitoring not written: {exc!r}")
                if name not in failed:
                    failed.append(name)
    if failed:
        log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
