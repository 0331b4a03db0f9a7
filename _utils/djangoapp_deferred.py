"""
The migrations a release left for later. A release with ``defer_after_switch``
runs the migrations that must follow the switch (``after_switch`` in its plan)
not after its own switch but when ``migrate_deferred`` is called: in a fleet,
once every web minion serves the new code (the rolling release does it after
its last batch), since the old code still serving elsewhere cannot run with
them. The release's ledger entry names them (``migrations_deferred``); the run
that applies them records a ``migrate`` entry, which a rollback reads as it
reads a release that ran them.

Not a Salt utility: ``djangoapp_release`` loads it with the engine's other modules.
"""

import time

from djangoapp_common import Redactor, StepFailed, now_iso
from djangoapp_config import load_env
from djangoapp_disk import (
    Layout,
    LockBusy,
    ReleaseLock,
    ledger_append,
    ledger_read,
    lock_holder,
)
from djangoapp_django import backup_database, migrate, migration_lock, needs_backup
from djangoapp_restore import Steps


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


def deferred_by(entries, rid):
    """The migrations that the release ``rid`` left for later and that no
    ``migrate`` run has applied since, from the ledger ``entries``."""
    deferred = []
    for entry in entries:
        if entry.get("id") != rid or entry.get("status") != "success":
            continue
        if entry.get("event") == "release":
            deferred = list(entry.get("migrations_deferred") or [])
        elif entry.get("event") == "migrate":
            deferred = []
    return deferred


def record(layout, entry, ret):
    """The ``migrate`` run's ledger entry, finished as the run ended."""
    entry["finished"] = now_iso()
    entry["status"] = "success" if ret["result"] else "failed"
    if not ret["result"]:
        entry["failed_step"] = ret.get("failed_step")
        entry["error"] = ret.get("error")
    ledger_append(layout.ledger, entry)


def migrate_deferred(cfg, host, user=None, jid=None):
    """
    Apply the migrations the live release left for later, under the release
    lock, after a dump of the database as it is (``<id>-deferred.dump``);
    returns ``{"app", "result", "id", "migrations", "backup", "steps",
    "seconds"}`` and, on failure, ``failed_step`` and ``error``. When the
    live release left none (or they ran already), ``result`` is True and
    ``migrations`` empty: nothing is run. A database that another minion
    migrated already is found up to date by ``migrate``, which is recorded
    all the same: the ledger says what the database has.
    """
    started = time.monotonic()
    layout = Layout(cfg["base_dir"])
    env = load_env(cfg)
    redact = Redactor.from_env(env)
    holder = lock_holder("migrate", user=user, jid=jid)
    ret = {
        "app": cfg["name"],
        "result": False,
        "id": None,
        "migrations": [],
        "backup": None,
        "steps": [],
    }
    step = Steps(ret)
    entry = None
    try:
        lock = step("lock", ReleaseLock(layout.lock, holder).acquire)
        try:
            rid = ret["id"] = layout.current_id()
            ret["migrations"] = deferred_by(ledger_read(layout.ledger), rid)
            if ret["migrations"]:
                live = layout.release_json(rid) or {}
                entry = {
                    "event": "migrate",
                    "started": holder["started"],
                    "id": rid,
                    "version": live.get("version"),
                    "user": holder["user"],
                    "jid": jid,
                    "migrations": {"after_switch": ret["migrations"]},
                }
                # the dump and the migrations under one hold of the migration
                # lock: another minion migrating meanwhile would change a table
                # while it is dumped
                dump = needs_backup(cfg)
                with migration_lock(
                    cfg, env, redact, step="backup" if dump else "migrate"
                ):
                    if dump:
                        ret["backup"] = entry["backup"] = step(
                            "backup",
                            backup_database,
                            cfg,
                            host,
                            env,
                            f"{rid}-deferred",
                        )
                    entry["migrations_ran"] = True
                    release = (layout.release(rid), env, redact, live.get("version"))
                    # every migration, no preflight process, the lock held
                    step("migrate", migrate, cfg, host, *release, None, None, True)
            ret["result"] = True
        except StepFailed as exc:
            ret.update(failed_step=exc.step, error=redact(exc.message))
        finally:
            if entry:
                record(layout, entry, ret)
            lock.release()
    except LockBusy as exc:
        ret.update(failed_step="lock", error=str(exc))
    ret["seconds"] = round(time.monotonic() - started, 3)
    return ret
