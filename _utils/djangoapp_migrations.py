"""
What a rollback leaves in the database: the migrations applied there that the
release it goes back to does not have. A rollback does not undo migrations (the
code put back runs on the schema as it is, which backward-compatible migrations
allow); it says which ones are ahead, so that whoever rolled back knows what the
old code does not know of, and where the dump taken before they ran is.

The check runs in a thread beside the switch and the hand-over of the workers.
A release records in its ``release.json`` the migrations its code knows (its own
apps' and those of its virtualenv's packages, as the preflight's Django loaded
them); the check then asks the database's own client for the applied ones, the
``django_migrations`` table, and compares. A release recorded before that, or a
database with no client of ours (SQLite), is checked by its own Django: the
preflight's ``applied_migrations`` stage, in the release's python, as the app's
user with the production environment.
"""

import os

from djangoapp_common import Redactor, StepFailed, read_json, tail
from djangoapp_config import load_env
from djangoapp_disk import ledger_read
from djangoapp_django import (
    database_of,
    needs_backup,
    read_applied_migrations,
    sql_query,
)
from djangoapp_host import run_in_thread
from salt.exceptions import CommandExecutionError

CHECK_TIMEOUT = 120
APPLIED_QUERY = "SELECT app, name FROM django_migrations"
CLIENTS = ("postgresql", "mysql")


def __virtual__():
    return (False, "part of the djangoapp release engine, loaded by djangoapp_release")


class AheadCheck:
    """
    The migrations applied in the app's database that the release in ``rdir``
    does not have, found in a thread started at once; ``result()`` waits for it.
    ``by`` says how: ``"record"`` (its ``release.json`` and the database's
    client) or ``"django"``.
    """

    def __init__(self, cfg, host, rdir, record):
        env = load_env(cfg)
        self.redact = Redactor.from_env(env)
        known = record.get("known_migrations")
        if known and (cfg["database"] or {}).get("engine") in CLIENTS:
            self.by = "record"
            argv, run_env = sql_query(
                database_of(cfg, env, "migrations"), APPLIED_QUERY
            )
            join = run_in_thread(
                host.run, argv, env=run_env, clean_env=True, timeout=CHECK_TIMEOUT
            )
            self._found = lambda: _ahead(known, _client_rows(join(), self.redact))
            return
        self.by = "django"
        join = run_in_thread(
            read_applied_migrations,
            cfg,
            host,
            rdir,
            env,
            self.redact,
            record.get("version") or "",
            CHECK_TIMEOUT,
        )
        self._found = lambda: _django_found(join())

    def result(self, layout, target, left):
        """``{"ok": True, "ahead": ["app.migration", ...], "warning": ...}``
        (a warning when some are ahead, naming the dump taken before the release
        ``left`` migrated, if any), or ``{"ok": False, "error": ...}`` when
        Django or the database could not tell."""
        try:
            found = {"ok": True, "ahead": self._found()}
        except StepFailed as exc:
            return {"ok": False, "error": exc.message}
        except Exception as exc:  # pylint: disable=broad-except
            return {"ok": False, "error": self.redact(f"{type(exc).__name__}: {exc}")}
        if found["ahead"]:
            backups = [
                entry.get("backup")
                for entry in ledger_read(layout.ledger)
                if entry.get("event") == "release" and entry.get("id") == left
            ]
            backup = next(filter(None, reversed(backups)), None)
            found["warning"] = ahead_warning(target, found["ahead"], backup)
        return found


def _ahead(known, applied):
    """The ``applied`` migrations (``(app, name)`` pairs) that ``known`` (a
    release's ``known_migrations``) lacks. Those of apps the release does not
    install are left out: no code of it reads their tables. A squashed
    migration's names include those it replaces."""
    apps, names = set(known.get("apps") or ()), set(known.get("names") or ())
    return sorted(
        f"{app}.{name}"
        for app, name in applied
        if app in apps and f"{app}.{name}" not in names
    )


def _client_rows(ret, redact):
    """The ``(app, name)`` rows of the database client's answer (``cmd.run_all``'s
    return: ``app<TAB>name`` lines); raises StepFailed."""
    if ret.get("retcode") != 0:
        text = tail(ret.get("stderr") or ret.get("stdout"), 500)
        raise StepFailed(
            "migrations", redact(f"the database did not list its migrations: {text}")
        )
    rows = (line.split("\t") for line in (ret.get("stdout") or "").splitlines())
    return [row for row in rows if len(row) == 2]


def _django_found(result):
    """What the preflight's ``applied_migrations`` stage found, compared."""
    applied = (entry.partition(".")[::2] for entry in result["applied_migrations"])
    return _ahead(result["known_migrations"], applied)


def start_check(cfg, host, rdir, note):
    """An ``AheadCheck`` of the release in ``rdir`` started, or None when the app
    has no database, the release no python, or the check cannot start (said
    through ``note``)."""
    if not needs_backup(cfg):
        return None
    if not os.path.exists(os.path.join(rdir, "venv", "bin", "python")):
        return None
    try:
        record = read_json(os.path.join(rdir, "release.json"), default={}) or {}
        return AheadCheck(cfg, host, rdir, record)
    except (CommandExecutionError, OSError, ValueError, StepFailed) as exc:
        note(f"could not check the migrations of {os.path.basename(rdir)}: {exc}")
        return None


def ahead_warning(target, ahead, backup=None):
    """What a rollback to ``target`` says when the database is ``ahead``."""
    text = (
        "the database keeps {} migration(s) that {} does not have ({}): a "
        "rollback does not undo migrations".format(len(ahead), target, ", ".join(ahead))
    )
    if backup:
        text += f"; the dump taken before they ran: {backup}"
    return text
