"""
Restoring an app's database from one of its dumps (those taken before a
migration, ``<backup_dir>/<release>.dump|.sql``, and the nightly ones,
``<backup_dir>/nightly/``): under the release lock, with the site in maintenance
while it runs, after a fresh dump of the database as it is. When loading the
chosen dump fails, the fresh dump is loaded back.

Not a Salt utility: ``djangoapp_release`` loads it with the engine's other modules.
"""

import os
import re
import time
from datetime import UTC, datetime

from djangoapp_common import SAFE_PATH, Redactor, StepFailed, inside
from djangoapp_config import load_env
from djangoapp_disk import Layout, LockBusy, ReleaseLock, lock_holder
from djangoapp_django import DUMPS, backup_database, database_of
from djangoapp_maintenance import (
    maintenance_state,
    switch_maintenance,
    wait_for_requests,
)
from salt.exceptions import CommandExecutionError, SaltInvocationError

RESTORE_TIMEOUT = 7200
# The engine's own names (release ids, nightly stamps): a path mysql's `source`
# takes as it is.
DUMP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
# What a dump taken by hand or before an app is taken down is named after.
DUMP_LABEL_RE = re.compile(r"[a-z][a-z0-9-]{0,30}\Z")
MAINTENANCE_MESSAGE = "This site is being restored and will be back shortly."


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def dump_suffix(cfg):
    engine = (cfg["database"] or {}).get("engine")
    if engine not in DUMPS:
        raise CommandExecutionError(
            f"app {cfg['name']!r} has no database to restore (engine {engine!r})"
        )
    return DUMPS[engine][0]


def dumps_of(cfg):
    """The app's dumps, newest first."""
    suffix = dump_suffix(cfg)
    found = []
    for directory in (cfg["backup_dir"], os.path.join(cfg["backup_dir"], "nightly")):
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if (
                name.endswith(suffix)
                and DUMP_NAME_RE.match(name)
                and os.path.isfile(path)
            ):
                found.append(path)
    return sorted(found, key=os.path.getmtime, reverse=True)


def chosen_dump(cfg, backup=None):
    """The dump ``backup`` names (a path, or a file name in the backup directory
    or its ``nightly/``), or the newest; refused before anything changes."""
    dumps = dumps_of(cfg)
    if backup is None:
        if not dumps:
            raise CommandExecutionError(
                f"no dump of {cfg['name']} in {cfg['backup_dir']} to restore"
            )
        return dumps[0]
    for path in dumps:
        if backup in (
            path,
            os.path.basename(path),
            os.path.relpath(path, cfg["backup_dir"]),
        ):
            return path
    raise SaltInvocationError(
        f"backup {backup!r} is not a dump of {cfg['name']} in {cfg['backup_dir']} "
        f"(the newest: {', '.join(os.path.basename(p) for p in dumps[:3]) or 'none'})"
    )


def _load_postgresql(db, path, run_env):
    """pg_restore's argv; the password goes into ``run_env``."""
    if db.get("password"):
        run_env["PGPASSWORD"] = db["password"]
    argv = ["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges"]
    argv += ["--single-transaction", "--exit-on-error", "--no-password"]
    argv += [f"--host={db['host']}", f"--port={db.get('port') or 5432}"]
    argv += [f"--username={db['user']}", f"--dbname={db['name']}", path]
    return argv


def _load_mysql(db, path, run_env):
    """mysql's argv; the password goes into ``run_env``."""
    if db.get("password"):
        run_env["MYSQL_PWD"] = db["password"]
    argv = ["mysql", f"--host={db['host']}", f"--port={db.get('port') or 3306}"]
    argv += [f"--user={db['user']}", db["name"], f"--execute=source {path}"]
    return argv


LOADERS = {"postgresql": _load_postgresql, "mysql": _load_mysql}


def load_dump(cfg, host, env, path, redact):
    """Load the dump ``path`` into the app's database (StepFailed on failure)."""
    if not inside(os.path.realpath(path), os.path.realpath(cfg["backup_dir"])):
        raise StepFailed("restore", f"{path} is not in {cfg['backup_dir']}")
    db = database_of(cfg, env, "restore")
    run_env = {"PATH": SAFE_PATH, "LC_ALL": "C"}
    argv = LOADERS[cfg["database"]["engine"]](db, path, run_env)
    host.check(
        "restore",
        argv,
        redact=redact,
        env=run_env,
        clean_env=True,
        timeout=RESTORE_TIMEOUT,
    )


class Steps:
    """The steps of the return: name, seconds, ok."""

    def __init__(self, ret):
        self.ret = ret

    def __call__(self, name, act, *args):
        started = time.monotonic()
        entry = {"name": name, "ok": False}
        self.ret["steps"].append(entry)
        try:
            result = act(*args)
            entry["ok"] = True
            return result
        finally:
            entry["seconds"] = round(time.monotonic() - started, 3)


def restore(cfg, host, backup=None, user=None, jid=None):
    """
    Restore the app's database from ``backup`` (the newest dump by default);
    returns ``{"app", "result", "restored_from", "backup_before", "steps",
    "seconds"}`` and, on failure, ``failed_step``, ``error`` and what was put
    back (``restored``).
    """
    started = time.monotonic()
    path = chosen_dump(cfg, backup)
    env = load_env(cfg)
    redact = Redactor.from_env(env)
    layout = Layout(cfg["base_dir"])
    holder = lock_holder("restore", os.path.basename(path), user, jid)
    ret = {"app": cfg["name"], "result": False, "restored_from": path, "steps": []}
    step = Steps(ret)
    lock = step("lock", ReleaseLock(layout.lock, holder).acquire)
    was_on = maintenance_state(cfg)["on"]
    try:
        if not was_on:
            step("maintenance", switch_maintenance, cfg, True, MAINTENANCE_MESSAGE)
        # a request the app took before the page went up may still read the tables
        ret["requests_before"] = step(
            "requests", wait_for_requests, cfg, int(cfg["graceful_timeout"])
        )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        ret["backup_before"] = step(
            "backup", backup_database, cfg, host, env, f"before-restore-{stamp}"
        )
        try:
            step("restore", load_dump, cfg, host, env, path, redact)
            ret["result"] = True
        except StepFailed as exc:
            ret.update(failed_step=exc.step, error=redact(exc.message))
            step("put_back", load_dump, cfg, host, env, ret["backup_before"], redact)
            ret["restored"] = [f"database as it was ({ret['backup_before']})"]
    except StepFailed as exc:
        ret.setdefault("failed_step", exc.step)
        ret.setdefault("error", redact(exc.message))
        if exc.step == "restore" and "restored" not in ret:
            ret["error"] += (
                f"; putting back {ret['backup_before']} failed too: the site stays "
                "in maintenance"
            )
            was_on = True
    finally:
        if not was_on:
            step("maintenance", switch_maintenance, cfg, False)
        lock.release()
        ret["seconds"] = round(time.monotonic() - started, 3)
    return ret


def dump_now(cfg, host, label="manual", user=None, jid=None):
    """
    Dump the app's database as it is now, under the release lock, into
    ``<backup_dir>/<label>-<UTC stamp>.dump|.sql``; returns ``{"app",
    "result", "backup", "steps", "seconds"}`` and, on failure,
    ``failed_step`` and ``error``. An app without a database has nothing to
    dump: ``result`` True, ``backup`` None.
    """
    if not DUMP_LABEL_RE.match(str(label)):
        raise SaltInvocationError(
            f"label {label!r} must be lowercase letters, digits and -, "
            "starting with a letter (at most 31)"
        )
    ret = {"app": cfg["name"], "result": False, "backup": None, "steps": []}
    if (cfg["database"] or {}).get("engine") not in DUMPS:
        ret.update(result=True, comment=f"app {cfg['name']} has no database")
        return ret
    started = time.monotonic()
    env = load_env(cfg)
    redact = Redactor.from_env(env)
    holder = lock_holder("backup", label, user, jid)
    step = Steps(ret)
    try:
        lock = step("lock", ReleaseLock(Layout(cfg["base_dir"]).lock, holder).acquire)
        try:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            ret["backup"] = step(
                "backup", backup_database, cfg, host, env, f"{label}-{stamp}"
            )
            ret["result"] = True
        finally:
            lock.release()
    except LockBusy as exc:
        ret.update(failed_step="lock", error=str(exc))
    except StepFailed as exc:
        ret.update(failed_step=exc.step, error=redact(exc.message))
    ret["seconds"] = round(time.monotonic() - started, 3)
    return ret
